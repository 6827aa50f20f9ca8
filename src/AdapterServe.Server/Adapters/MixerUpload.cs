using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Store;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Net.Http.Headers;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// <c>POST /v1/mixers</c> (issue 10 part 5): a LoRA-Mixer built from registered LoRAs named in the form and an uploaded
/// router file. The form's fields become the mixer's <c>adapter_config.json</c> in the store's staging folder, the
/// router part is streamed next to it as <c>mixer_model.safetensors</c>, and the folder is committed like any upload:
/// validated against the base model and the named experts, stored, versioned, served.
/// Fields: <c>name</c>; <c>experts</c> (repeat the part, or one part holding a JSON array or comma-separated names);
/// <c>top_k</c>; optional <c>renormalize</c> (true/false) and <c>target_modules</c> (like <c>experts</c>);
/// the file part <c>mixer_model.safetensors</c> (part name, or a <c>file</c> part with that file name).
/// </summary>
internal static class MixerUpload
{
    private const long MultipartOverhead = 1 << 20;
    private const int MaxFieldBytes = 64 * 1024;

    public static async Task<AdapterCommit> ReceiveAsync(HttpContext http, AdapterStore store, bool replace, CancellationToken cancellationToken)
    {
        var request = http.Request;
        long limit = store.MaxUploadBytes;
        if (request.ContentLength > limit + MultipartOverhead)
            throw new AdapterValidationException($"the request is larger than the limit of {limit} bytes (Adapters:MaxUploadBytes)", "upload_too_large", 413);
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodyLimit)
            bodyLimit.MaxRequestBodySize = limit + MultipartOverhead;
        if (!MediaTypeHeaderValue.TryParse(request.ContentType, out var mediaType)
            || !mediaType.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase))
            throw new AdapterValidationException($"expected a multipart/form-data upload (got '{request.ContentType}')", "unsupported_media_type", 415);
        string boundary = HeaderUtilities.RemoveQuotes(mediaType.Boundary).Value ?? "";
        if (boundary.Length is 0 or > 200) throw new AdapterValidationException("the multipart/form-data content type has no valid boundary", "invalid_multipart");

        var reader = new MultipartReader(boundary, request.Body) { BodyLengthLimit = null };
        using var staging = store.BeginStaging();
        string? name = null, topK = null, renormalize = null;
        List<string>? experts = null, targets = null;
        bool routers = false;
        long received = 0;

        MultipartSection? section;
        while ((section = await reader.ReadNextSectionAsync(cancellationToken)) is not null)
        {
            if (!ContentDispositionHeaderValue.TryParse(section.ContentDisposition, out var disposition) || !disposition.DispositionType.Equals("form-data", StringComparison.OrdinalIgnoreCase))
                throw new AdapterValidationException("every part needs 'Content-Disposition: form-data; name=...'", "invalid_multipart");
            string part = HeaderUtilities.RemoveQuotes(disposition.Name).Value ?? "";
            string fileName = Path.GetFileName(HeaderUtilities.RemoveQuotes(disposition.FileName).Value ?? "");
            switch (part)
            {
                case "name":
                    if (name is not null) throw BadRequest("the 'name' part was sent twice", "duplicate_part", "name");
                    name = await ReadTextAsync(section.Body, part, cancellationToken);
                    store.EnsureCanCreate(name, replace);
                    break;
                case "experts":
                    (experts ??= []).AddRange(Names(await ReadTextAsync(section.Body, part, cancellationToken), part));
                    break;
                case "target_modules":
                    (targets ??= []).AddRange(Names(await ReadTextAsync(section.Body, part, cancellationToken), part));
                    break;
                case "top_k":
                    if (topK is not null) throw BadRequest("the 'top_k' part was sent twice", "duplicate_part", part);
                    topK = (await ReadTextAsync(section.Body, part, cancellationToken)).Trim();
                    break;
                case "renormalize":
                    if (renormalize is not null) throw BadRequest("the 'renormalize' part was sent twice", "duplicate_part", part);
                    renormalize = (await ReadTextAsync(section.Body, part, cancellationToken)).Trim();
                    break;
                case LoraMixerConfig.RouterFileName:
                case "file" when fileName == LoraMixerConfig.RouterFileName:
                    if (routers) throw BadRequest($"the '{LoraMixerConfig.RouterFileName}' part was sent twice", "duplicate_part", LoraMixerConfig.RouterFileName);
                    routers = true;
                    await using (var output = staging.CreateReceivedFile(LoraMixerConfig.RouterFileName))
                        received = await CopyAsync(section.Body, output, received, limit, store.WritePause, cancellationToken);
                    break;
                default:
                    throw BadRequest(
                        $"unexpected form part '{part}' (expected 'name', 'experts', 'top_k', optional 'renormalize' and 'target_modules', and the file '{LoraMixerConfig.RouterFileName}')",
                        "unexpected_part", part);
            }
        }

        if (name is null) throw BadRequest("the mixer has no 'name' part", "missing_name", "name");
        if (experts is null || experts.Count == 0) throw BadRequest("the mixer has no 'experts' (the names of registered LoRA adapters)", "missing_experts", "experts");
        if (!routers) throw BadRequest($"the mixer has no '{LoraMixerConfig.RouterFileName}' part (one router per routed module)", "missing_adapter_files", LoraMixerConfig.RouterFileName);
        var config = new JsonObject
        {
            ["peft_type"] = LoraMixerConfig.PeftType,
            ["experts"] = new JsonArray([.. experts.Select(e => (JsonNode)e)]),
        };
        if (topK is not null)
            config["top_k"] = int.TryParse(topK, out int k) ? k : throw BadRequest($"'top_k' must be an integer, got '{Shorten(topK)}'", "invalid_field", "top_k");
        if (renormalize is not null)
            config["renormalize"] = bool.TryParse(renormalize, out bool r) ? r : throw BadRequest($"'renormalize' must be true or false, got '{Shorten(renormalize)}'", "invalid_field", "renormalize");
        if (targets is not null)
            config["target_modules"] = targets.Count > 0 ? new JsonArray([.. targets.Select(t => (JsonNode)t)]) : throw BadRequest("'target_modules' is empty", "invalid_field", "target_modules");
        await using (var output = staging.CreateReceivedFile(LoraMixerConfig.FileName))
            await output.WriteAsync(Encoding.UTF8.GetBytes(config.ToJsonString()), cancellationToken);
        return await store.CommitAsync(name, staging, replace, "mixers:form", cancellationToken);
    }

    /// <summary>A list field: a JSON array of strings, or names separated by commas.</summary>
    private static IEnumerable<string> Names(string text, string field)
    {
        text = text.Trim();
        if (text.StartsWith('['))
        {
            string[]? parsed;
            try { parsed = JsonSerializer.Deserialize<string[]>(text); }
            catch (JsonException) { parsed = null; }
            if (parsed is null || parsed.Any(string.IsNullOrWhiteSpace))
                throw BadRequest($"'{field}' must be a JSON array of names or comma-separated names", "invalid_field", field);
            return parsed.Select(p => p.Trim());
        }
        var names = text.Split(',', StringSplitOptions.TrimEntries);
        if (names.Any(n => n.Length == 0)) throw BadRequest($"'{field}' holds an empty name", "invalid_field", field);
        return names;
    }

    private static async Task<long> CopyAsync(Stream input, Stream output, long received, long limit, StoreWritePause pause, CancellationToken cancellationToken)
    {
        var buffer = new byte[1 << 16];
        int n;
        while ((n = await input.ReadAsync(buffer, cancellationToken)) > 0)
        {
            received += n;
            if (received > limit) throw new AdapterValidationException($"the upload is larger than the limit of {limit} bytes (Adapters:MaxUploadBytes)", "upload_too_large", 413);
            await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
            pause.At("receiving");
        }
        return received;
    }

    private static async Task<string> ReadTextAsync(Stream input, string field, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxFieldBytes + 1];
        int total = 0, n;
        while (total < buffer.Length && (n = await input.ReadAsync(buffer.AsMemory(total), cancellationToken)) > 0) total += n;
        if (total > MaxFieldBytes) throw BadRequest($"the '{field}' part is too long", "invalid_field", field);
        return Encoding.UTF8.GetString(buffer, 0, total);
    }

    private static string Shorten(string text) => text.Length <= 40 ? text : text[..40] + "…";

    private static AdapterStoreException BadRequest(string message, string code, string param) => new(message, code, 400, param);
}
