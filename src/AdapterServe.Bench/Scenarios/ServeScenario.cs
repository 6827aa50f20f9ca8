using System.Diagnostics;
using AdapterServe.Bench.Http;
using AdapterServe.Bench.Reporting;

namespace AdapterServe.Bench.Scenarios;

/// <summary>
/// OpenAI-protocol load generator: <c>--requests</c> streaming completions, <c>--concurrency</c> at a time, each naming
/// a model drawn from <c>--distribution</c> over <c>--adapters</c> (or the base model). Bounded by <c>--timeout-s</c>:
/// on time-out, requests in flight are cancelled and the figures cover the finished ones. Loopback URLs only.
/// </summary>
public sealed class ServeScenario : IScenario
{
    private static readonly string[] Words =
        "once upon a time there was a little robot who liked to count the stars above the quiet town every night".Split(' ');

    public bool UsesEngine => false;

    public async Task RunAsync(BenchContext context, BenchReport report, CancellationToken ct)
    {
        var o = context.Options;
        var url = ServerRoot(LoopbackUrl.Parse(o.Url!));
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = Math.Max(o.Concurrency, 2) }) { Timeout = Timeout.InfiniteTimeSpan };
        var client = new CompletionStreamClient(http, url, o.ApiKey);
        var deadline = DateTime.UtcNow.AddSeconds(o.TimeoutSeconds);
        using var setup = CancellationTokenSource.CreateLinkedTokenSource(ct);
        setup.CancelAfter(TimeSpan.FromSeconds(o.TimeoutSeconds));

        IReadOnlyList<string> models;
        string prompt = string.Join(' ', Enumerable.Range(0, o.PromptWords).Select(i => Words[i % Words.Length]));
        try
        {
            models = o.Adapters.Count > 0 ? o.Adapters : [o.ServedModel ?? await client.FirstModelAsync(setup.Token)];
            context.Log($"serve: {url} · models {string.Join(",", models)} · {o.Distribution} · {o.Requests} requests, {o.Concurrency} at a time");
            // Warm-up: every model once, so adapters are loaded before the clock runs; a failure here is a setup error.
            for (int w = 0; w < o.Warmup; w++)
                foreach (var model in models)
                {
                    var r = await client.CompleteAsync(model, prompt, Math.Min(o.MaxTokens, 8), o.IgnoreEos, setup.Token);
                    if (!r.Ok) throw new BenchException($"warm-up request on model '{model}' failed: {r.Error}");
                }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new BenchException($"--timeout-s {o.TimeoutSeconds} ran out before the measured requests (listing models or warming up {url})");
        }
        catch (HttpRequestException e)
        {
            throw new BenchException($"cannot reach {url}: {e.Message}");
        }
        var chooser = ModelChooser.Parse(o.Distribution, models, o.Seed);

        var passes = new List<PassResult>();
        for (int pass = 0; pass < o.Repeats && DateTime.UtcNow < deadline; pass++)
        {
            var result = await RunPassAsync(client, chooser, prompt, o, deadline, ct);
            passes.Add(result);
            context.Log($"serve pass {pass + 1}/{o.Repeats}: {result.Ok.Count} ok, {result.Failed.Count} failed, {result.Unfinished} unfinished in {result.Seconds:0.0}s");
        }
        if (passes.Count == 0) throw new BenchException($"--timeout-s {o.TimeoutSeconds} ran out before the measured requests");

        IReadOnlyList<double> PerPass(Func<PassResult, double> f) => passes.Select(f).ToList();
        static double P(IReadOnlyCollection<double> xs, double p) => xs.Count > 0 ? Stats.Percentile(xs, p) : double.NaN;
        report.Add(Figure.Of("serve.requests_per_s", "req/s", PerPass(p => p.Ok.Count / p.Seconds)));
        report.Add(Figure.Of("serve.output_tokens_per_s", "tokens/s", PerPass(p => p.Ok.Sum(r => r.CompletionTokens) / p.Seconds)));
        foreach (double q in new[] { 50, 95, 99 })
            report.Add(Figure.Of($"serve.ttft_ms_p{q}", "ms", PerPass(p => P(p.Ok.Select(r => r.TimeToFirstTokenMs ?? double.NaN).Where(double.IsFinite).ToList(), q))));
        foreach (double q in new[] { 50, 95, 99 })
            report.Add(Figure.Of($"serve.itl_ms_p{q}", "ms", PerPass(p => P(p.Ok.SelectMany(r => r.InterTokenMs).ToList(), q))));
        report.Add(Figure.Of("serve.completed", "count", PerPass(p => p.Ok.Count)));
        report.Add(Figure.Of("serve.errors", "count", PerPass(p => p.Failed.Count)));
        report.Add(Figure.Of("serve.unfinished", "count", PerPass(p => p.Unfinished)));
        report.Add(Figure.Of("serve.seconds", "s", PerPass(p => p.Seconds)));
        foreach (var model in models)
            report.Add(Figure.Of($"serve.requests.{model}", "count", PerPass(p => p.Ok.Count(r => r.Model == model) + p.Failed.Count(r => r.Model == model))));

        foreach (var error in passes.SelectMany(p => p.Failed).Select(r => $"{r.Model}: {r.Error}").Distinct().Take(5))
            report.Notes.Add("request failed: " + error);
        if (passes.Any(p => p.Unfinished > 0))
            report.Notes.Add($"--timeout-s {o.TimeoutSeconds} ran out: {passes.Sum(p => p.Unfinished)} requests were cancelled unfinished");
        if (passes.All(p => p.Ok.Count == 0)) report.Errors.Add("no request succeeded");
        if (passes.Any(p => p.Ok.Any(r => r.TokenChunks != r.CompletionTokens)))
            report.Notes.Add("the server's usage.completion_tokens differs from its token chunks: inter-token latency is per chunk");
    }

    /// <summary>The server's root: OpenAI clients are often given <c>…/v1</c>; the paths below add it themselves.</summary>
    public static Uri ServerRoot(Uri url)
    {
        string path = url.AbsolutePath.TrimEnd('/');
        if (path.EndsWith("/v1", StringComparison.Ordinal)) path = path[..^3];
        return new UriBuilder(url) { Path = path + "/", Query = "" }.Uri;
    }

    private sealed record PassResult(List<StreamedCompletion> Ok, List<StreamedCompletion> Failed, int Unfinished, double Seconds);

    private static async Task<PassResult> RunPassAsync(CompletionStreamClient client, ModelChooser chooser, string prompt, BenchOptions o, DateTime deadline, CancellationToken ct)
    {
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bounded.CancelAfter(deadline - DateTime.UtcNow is var left && left > TimeSpan.Zero ? left : TimeSpan.Zero);
        var ok = new List<StreamedCompletion>();
        var failed = new List<StreamedCompletion>();
        int next = 0, unfinished = 0;
        var clock = Stopwatch.StartNew();
        async Task Worker()
        {
            while (Interlocked.Increment(ref next) <= o.Requests)
            {
                if (bounded.IsCancellationRequested) { Interlocked.Increment(ref unfinished); continue; }
                try
                {
                    var r = await client.CompleteAsync(chooser.Next(), prompt, o.MaxTokens, o.IgnoreEos, bounded.Token);
                    lock (ok) (r.Ok ? ok : failed).Add(r);
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    Interlocked.Increment(ref unfinished);
                }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, o.Concurrency).Select(_ => Task.Run(Worker, CancellationToken.None)));
        return new PassResult(ok, failed, unfinished, clock.Elapsed.TotalSeconds);
    }
}
