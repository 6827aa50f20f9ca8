using System.Diagnostics;
using System.Runtime.InteropServices;

namespace AdapterServe.Bench.Reporting;

/// <summary>Reads what the machine and the process look like right now.</summary>
public static class MachineProbe
{
    /// <param name="withTorch">False for the HTTP scenario: it never loads TorchSharp.</param>
    public static MachineInfo Describe(string? dtype, string? device, bool withTorch) => new(
        Environment.ProcessorCount,
        RuntimeInformation.OSDescription,
        CpuModel(),
        RuntimeInformation.FrameworkDescription,
        withTorch ? typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString(3) : null,
        dtype,
        device,
        withTorch ? TorchSharp.torch.get_num_threads() : null,
        LoadAverage(),
        RelevantEnvironment());

    private static readonly string[] EnvironmentPrefixes = ["OMP_", "MKL_", "KMP_", "GOMP_", "DOTNET_", "TORCH_"];
    // The SDK's own switches do not change how the benchmark runs.
    private static readonly string[] IgnoredPrefixes = ["DOTNET_CLI_", "DOTNET_ROOT", "DOTNET_NOLOGO", "DOTNET_GENERATE_", "DOTNET_SKIP_", "DOTNET_INSTALL"];

    private static SortedDictionary<string, string> RelevantEnvironment()
    {
        var found = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
            if (e.Key is string k && EnvironmentPrefixes.Any(p => k.StartsWith(p, StringComparison.Ordinal)) && !IgnoredPrefixes.Any(p => k.StartsWith(p, StringComparison.Ordinal)))
                found[k] = e.Value as string ?? "";
        return found;
    }

    private static string? LoadAverage()
    {
        try { return File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : null; }
        catch (IOException) { return null; }
    }

    /// <summary>Collects garbage first, so the sample shows what is really retained.</summary>
    public static MemorySample Memory(string label, Stopwatch since, bool withTorch)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        using var process = Process.GetCurrentProcess();
        return new MemorySample(label, since.Elapsed.TotalSeconds, process.WorkingSet64, process.PrivateMemorySize64, GC.GetTotalMemory(false),
            withTorch ? TorchSharp.torch.Tensor.TotalCount : null,
            withTorch ? TorchSharp.torch.Tensor.PeakCount : null);
    }

    private static string CpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int i and > 0)
                        return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }
}
