using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Server;

/// <summary>
/// The built server as a real child process: <c>dotnet AdapterServe.Server.dll --port 0</c> (the embedded demo model
/// unless the arguments say otherwise), its console captured, its address read from the "Now listening on" line.
/// Disposing kills it if it is still running and removes its data directory.
/// </summary>
public sealed partial class ServerProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TempDir _data;
    private readonly ConcurrentQueue<string> _output = new();
    private readonly TaskCompletionSource<Uri> _address = new(TaskCreationOptions.RunContinuationsAsynchronously);

    [GeneratedRegex(@"Now listening on: (http://\S+)")]
    private static partial Regex ListeningLine();

    private ServerProcess(Process process, TempDir data)
    {
        _process = process;
        _data = data;
    }

    public HttpClient Client { get; private set; } = null!;
    public int Id => _process.Id;
    /// <summary>Everything the server wrote to stdout and stderr so far.</summary>
    public string Output => string.Join('\n', _output);

    public static async Task<ServerProcess> StartAsync(params string[] args)
    {
        var data = new TempDir();
        // A test run started in the background of a non-interactive shell (`.ci/run &`) inherits SIGINT as ignored, and
        // .NET keeps an inherited ignore, so the Ctrl+C tests would signal a server that cannot hear them. coreutils'
        // env resets SIGINT to its default before it execs the server (same pid), as an interactive terminal has it.
        bool resetSigint = File.Exists(EnvTool);
        var start = new ProcessStartInfo(resetSigint ? EnvTool : DotnetHost())
        {
            WorkingDirectory = AppContext.BaseDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in (string[])[.. resetSigint ? ["--default-signal=INT", DotnetHost()] : (string[])[],
                     Path.Combine(AppContext.BaseDirectory, "AdapterServe.Server.dll"), "--port", "0", "--data-dir", data.Path, .. args])
            start.ArgumentList.Add(a);
        var server = new ServerProcess(new Process { StartInfo = start }, data);
        server._process.OutputDataReceived += (_, e) => server.Received(e.Data);
        server._process.ErrorDataReceived += (_, e) => server.Received(e.Data);
        server._process.Start();
        server._process.BeginOutputReadLine();
        server._process.BeginErrorReadLine();
        try
        {
            var exited = server._process.WaitForExitAsync(TestContext.Current.CancellationToken);
            var first = await Task.WhenAny(server._address.Task, exited, Task.Delay(TimeSpan.FromSeconds(120), TestContext.Current.CancellationToken));
            if (first != server._address.Task) throw new InvalidOperationException($"the server did not start listening:\n{server.Output}");
            server.Client = new HttpClient { BaseAddress = await server._address.Task, Timeout = TimeSpan.FromSeconds(120) };
            var deadline = DateTime.UtcNow.AddSeconds(120);
            while ((await Http.GetAsync(server.Client, "/health")).Status != 200)
            {
                if (DateTime.UtcNow > deadline || server._process.HasExited) throw new InvalidOperationException($"the server did not become healthy:\n{server.Output}");
                await Task.Delay(50, TestContext.Current.CancellationToken);
            }
            return server;
        }
        catch
        {
            await server.DisposeAsync();
            throw;
        }
    }

    private void Received(string? line)
    {
        if (line is null) return;
        _output.Enqueue(line);
        if (ListeningLine().Match(line) is { Success: true } m) _address.TrySetResult(new Uri(m.Groups[1].Value));
    }

    private const string EnvTool = "/usr/bin/env";

    /// <summary>The dotnet host running these tests (<c>DOTNET_HOST_PATH</c>), else <c>dotnet</c> on the PATH.</summary>
    private static string DotnetHost() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    /// <summary>
    /// Sends SIGTERM, as a container runtime or systemd stops a service, or <c>INT</c> as Ctrl+C does
    /// (<see cref="Process.Kill()"/> would be SIGKILL).
    /// </summary>
    public async Task SignalAsync(string signal = "TERM")
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-" + signal, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false })!;
        await kill.WaitForExitAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0, kill.ExitCode);
    }

    /// <summary>Waits for the process to end by itself and returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        limit.CancelAfter(timeout);
        try { await _process.WaitForExitAsync(limit.Token); }
        catch (OperationCanceledException) { throw new TimeoutException($"the server did not exit within {timeout.TotalSeconds:F0} s:\n{Output}"); }
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        Client?.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync(CancellationToken.None);
        }
        _process.Dispose();
        _data.Dispose();
    }
}
