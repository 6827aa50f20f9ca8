using System.Text;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.WebUtilities;
using Microsoft.Net.Http.Headers;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// Reads a <c>multipart/form-data</c> adapter upload part by part with <see cref="MultipartReader"/>, streaming each
/// file straight into the store's staging folder (never a whole file in memory, never the form buffering), and
/// counting bytes against <see cref="AdapterStoreOptions.MaxUploadBytes"/> (413 beyond).
/// </summary>
internal static class AdapterUpload
{
    /// <summary>Room for part headers and boundaries on top of the file bytes.</summary>
    private const long MultipartOverhead = 1 << 20;
    private const int MaxNameBytes = 4096;

    public static async Task<AdapterCommit> ReceiveAsync(HttpContext http, AdapterStore store, bool replace, CancellationToken cancellationToken)
    {
        var request = http.Request;
        long limit = store.MaxUploadBytes;
        if (request.ContentLength > limit + MultipartOverhead)
            throw TooLarge(limit, $"the request declares {request.ContentLength} bytes");
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodyLimit)
            bodyLimit.MaxRequestBodySize = limit + MultipartOverhead;

        if (!MediaTypeHeaderValue.TryParse(request.ContentType, out var mediaType)
            || !mediaType.MediaType.Equals("multipart/form-data", StringComparison.OrdinalIgnoreCase))
            throw new AdapterValidationException($"expected a multipart/form-data upload (got '{request.ContentType}')", "unsupported_media_type", 415);
        string boundary = HeaderUtilities.RemoveQuotes(mediaType.Boundary).Value ?? "";
        if (boundary.Length is 0 or > 200) throw new AdapterValidationException("the multipart/form-data content type has no valid boundary", "invalid_multipart");

        var reader = new MultipartReader(boundary, request.Body) { BodyLengthLimit = null };
        using var staging = store.BeginStaging();
        string? name = null, archive = null;
        bool loose = false;
        long received = 0;

        MultipartSection? section;
        while ((section = await reader.ReadNextSectionAsync(cancellationToken)) is not null)
        {
            if (!ContentDispositionHeaderValue.TryParse(section.ContentDisposition, out var disposition) || !disposition.DispositionType.Equals("form-data", StringComparison.OrdinalIgnoreCase))
                throw new AdapterValidationException("every part needs 'Content-Disposition: form-data; name=...'", "invalid_multipart");
            string part = HeaderUtilities.RemoveQuotes(disposition.Name).Value ?? "";
            string fileName = Path.GetFileName(HeaderUtilities.RemoveQuotes(disposition.FileName).Value is { Length: > 0 } plain ? plain : disposition.FileNameStar.Value ?? "");

            if (part == "name")
            {
                if (name is not null) throw BadRequest("the 'name' part was sent twice", "duplicate_part", "name");
                name = await ReadTextAsync(section.Body, cancellationToken);
                store.EnsureCanCreate(name, replace);
            }
            else if (staging.IsAdapterFile(part) || (part == "file" && staging.IsAdapterFile(fileName)))
            {
                if (archive is not null) throw Conflicting();
                string file = part == "file" ? fileName : part;
                await using var output = staging.CreateReceivedFile(file);
                received = await CopyAsync(section.Body, output, received, limit, store.WritePause, cancellationToken);
                loose = true;
            }
            else if (part == "file")
            {
                if (archive is not null) throw BadRequest("the 'file' part was sent twice; upload one archive", "duplicate_part", "file");
                if (loose) throw Conflicting();
                archive = staging.NewUploadPath();
                await using var output = new FileStream(archive, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
                received = await CopyAsync(section.Body, output, received, limit, store.WritePause, cancellationToken);
            }
            else
            {
                throw BadRequest(
                    $"unexpected form part '{part}' (expected 'name', and 'file' or '{AdapterValidator.ConfigFileName}' + '{AdapterValidator.WeightsFileName}')",
                    "unexpected_part", part);
            }
        }

        if (name is null) throw BadRequest("the upload has no 'name' part", "missing_name", "name");
        if (archive is null && !loose)
            throw BadRequest(
                $"the upload has no adapter files: send a 'file' part (.zip or .tar.gz) or '{AdapterValidator.ConfigFileName}' and '{AdapterValidator.WeightsFileName}' parts",
                "missing_adapter_files", "file");
        if (archive is not null) await Task.Run(() => staging.UseArchive(archive, store.ArchiveLimits), cancellationToken);
        return await store.CommitAsync(name, staging, replace, archive is not null ? "upload:archive" : "upload:files", cancellationToken);
    }

    private static async Task<long> CopyAsync(Stream input, Stream output, long received, long limit, StoreWritePause pause, CancellationToken cancellationToken)
    {
        var buffer = new byte[1 << 16];
        int n;
        while ((n = await input.ReadAsync(buffer, cancellationToken)) > 0)
        {
            received += n;
            if (received > limit) throw TooLarge(limit, "the files sent so far exceed it");
            await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken);
            pause.At("receiving");
        }
        return received;
    }

    private static async Task<string> ReadTextAsync(Stream input, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxNameBytes + 1];
        int total = 0, n;
        while (total < buffer.Length && (n = await input.ReadAsync(buffer.AsMemory(total), cancellationToken)) > 0) total += n;
        if (total > MaxNameBytes) throw BadRequest("the 'name' part is too long", "invalid_adapter_name", "name");
        return Encoding.UTF8.GetString(buffer, 0, total);
    }

    private static AdapterStoreException BadRequest(string message, string code, string param) => new(message, code, 400, param);

    private static AdapterValidationException Conflicting() =>
        new("send either one archive in the 'file' part or the loose PEFT files, not both", "conflicting_parts");

    private static AdapterValidationException TooLarge(long limit, string detail) =>
        new($"the upload is larger than the limit of {limit} bytes (Adapters:MaxUploadBytes): {detail}", "upload_too_large", 413);
}
