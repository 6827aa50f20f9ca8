using System.Diagnostics;
using System.Net.Http.Headers;
using System.Net.ServerSentEvents;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterServe.Bench.Http;

/// <summary>What one streamed completion looked like from the client.</summary>
/// <param name="CompletionTokens">The server's <c>usage.completion_tokens</c> when it sends usage, else the number of token chunks.</param>
public sealed record StreamedCompletion(string Model, bool Ok, string? Error, double? TimeToFirstTokenMs, IReadOnlyList<double> InterTokenMs, int TokenChunks, int CompletionTokens, double TotalMs);

/// <summary>
/// Streams <c>POST /v1/completions</c> of any OpenAI-compatible server and times the server-sent events.
/// A chunk with a choice that is not the final one (no <c>finish_reason</c>) or that carries text counts as a token.
/// </summary>
public sealed class CompletionStreamClient(HttpClient http, Uri baseUrl, string? apiKey)
{
    private readonly Uri _completions = new(baseUrl, "v1/completions");

    /// <summary>The first model id of <c>GET /v1/models</c>.</summary>
    public async Task<string> FirstModelAsync(CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(baseUrl, "v1/models"));
        Authorize(request);
        using var response = await http.SendAsync(request, ct);
        string body = await response.Content.ReadAsStringAsync(ct);
        if (!response.IsSuccessStatusCode) throw new BenchException($"GET /v1/models answered {(int)response.StatusCode}: {Snippet(body)}; pass --model or --adapters");
        return JsonNode.Parse(body)?["data"]?.AsArray().FirstOrDefault()?["id"]?.GetValue<string>()
            ?? throw new BenchException("GET /v1/models listed no model; pass --model or --adapters");
    }

    /// <summary>Never throws for a failed request (the result says why); throws only when <paramref name="ct"/> is cancelled.</summary>
    public async Task<StreamedCompletion> CompleteAsync(string model, string prompt, int maxTokens, bool ignoreEos, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["model"] = model,
            ["prompt"] = prompt,
            ["max_tokens"] = maxTokens,
            ["temperature"] = 0,
            ["stream"] = true,
            ["stream_options"] = new JsonObject { ["include_usage"] = true },
        };
        if (ignoreEos) body["ignore_eos"] = true;
        using var request = new HttpRequestMessage(HttpMethod.Post, _completions) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        Authorize(request);

        long started = Stopwatch.GetTimestamp();
        var tokenTimes = new List<long>(maxTokens);
        int? usageTokens = null;
        StreamedCompletion Result(bool ok, string? error)
        {
            var gaps = new List<double>(Math.Max(0, tokenTimes.Count - 1));
            for (int i = 1; i < tokenTimes.Count; i++) gaps.Add(Stopwatch.GetElapsedTime(tokenTimes[i - 1], tokenTimes[i]).TotalMilliseconds);
            double? ttft = tokenTimes.Count > 0 ? Stopwatch.GetElapsedTime(started, tokenTimes[0]).TotalMilliseconds : null;
            return new StreamedCompletion(model, ok, error, ttft, gaps, tokenTimes.Count, usageTokens ?? tokenTimes.Count, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }

        try
        {
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            if (!response.IsSuccessStatusCode)
                return Result(false, $"HTTP {(int)response.StatusCode}: {Snippet(await response.Content.ReadAsStringAsync(ct))}");
            await using var stream = await response.Content.ReadAsStreamAsync(ct);
            bool done = false;
            await foreach (var item in SseParser.Create(stream).EnumerateAsync(ct))
            {
                if (item.Data == "[DONE]") { done = true; break; }
                JsonNode? chunk;
                try { chunk = JsonNode.Parse(item.Data); }
                catch (JsonException) { return Result(false, $"a stream event is not JSON: {Snippet(item.Data)}"); }
                if (chunk?["error"] is JsonNode error) return Result(false, $"error event: {Snippet(error.ToJsonString())}");
                if (chunk?["usage"]?["completion_tokens"] is JsonValue usage && usage.TryGetValue(out int n)) usageTokens = n;
                if (chunk?["choices"] is JsonArray choices && choices.Any(IsToken)) tokenTimes.Add(Stopwatch.GetTimestamp());
            }
            return done ? Result(true, null) : Result(false, "the stream ended without data: [DONE]");
        }
        catch (Exception e) when (e is HttpRequestException or IOException && ct.IsCancellationRequested)
        {
            throw new OperationCanceledException("cancelled while streaming", e, ct);
        }
        catch (HttpRequestException e) { return Result(false, $"HTTP request failed: {e.Message}"); }
        catch (IOException e) { return Result(false, $"the stream broke: {e.Message}"); }
    }

    private static bool IsToken(JsonNode? choice)
    {
        if (choice is null) return false;
        bool hasText = choice["text"] is JsonValue t && t.TryGetValue(out string? text) && text.Length > 0;
        bool final = choice["finish_reason"] is JsonValue f && f.GetValueKind() == JsonValueKind.String;
        return hasText || (!final && choice["text"] is not null);
    }

    private void Authorize(HttpRequestMessage request)
    {
        if (apiKey is { Length: > 0 }) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
    }

    private static string Snippet(string s) => s.Length <= 300 ? s : s[..300] + "…";
}
