using System.Text.Json;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Store;
using Microsoft.AspNetCore.Mvc;

namespace AdapterServe.Server.Adapters;

/// <summary>The adapter API: upload, list, inspect, delete, pin; vLLM's load/unload_lora_adapter.</summary>
public static class AdapterEndpoints
{
    public static IEndpointRouteBuilder MapAdapterEndpoints(this IEndpointRouteBuilder app)
    {
        var api = app.MapGroup("/v1").WithTags("Adapters").AddEndpointFilter(AdapterErrors.Filter).AddEndpointFilter<RouteGroupBuilder, AdapterApiKeyFilter>();

        api.MapGet("/adapters", List)
            .WithName("ListAdapters")
            .WithSummary("List stored adapters")
            .WithDescription("Every stored adapter's current version: kind, rank, target modules, bytes, content hash, and runtime status (stored / host / device, pinned, load count, last used).")
            .Produces<AdapterList>();

        api.MapGet("/adapters/{name}", Get)
            .WithName("GetAdapter")
            .WithSummary("Describe one adapter")
            .WithDescription("Like one entry of the list, plus every adapted module with its rank and scaling.")
            .Produces<AdapterInfo>()
            .Produces<ApiError>(StatusCodes.Status404NotFound);

        api.MapGet("/adapters/{name}/experts", GetExperts)
            .WithName("GetAdapterExperts")
            .WithSummary("Where a mixture's tokens went")
            .WithDescription("Per routed module of a mixture adapter (LoRA-Mixer, OMoE): routed tokens, each expert's selections, share and utilisation since start, and the load balance (normalised entropy of the shares, 0..1) since start and over the sliding window of the adapterserve_expert_load_balance gauge. 400 not_a_mixture for kinds without experts.")
            .Produces<AdapterExperts>()
            .Produces<ApiError>(StatusCodes.Status400BadRequest)
            .Produces<ApiError>(StatusCodes.Status404NotFound);

        // The process's expert accounting, configured (window, forgetting deleted adapters) before the first request.
        app.ServiceProvider.GetRequiredService<ExpertUsage>();

        var admin = api.MapGroup("").AddEndpointFilter<AdminKeyFilter>();

        admin.MapPost("/adapters", Upload)
            .WithName("UploadAdapter")
            .WithSummary("Upload a PEFT adapter (admin)")
            .WithDescription("multipart/form-data: a text part 'name', then either one 'file' part (.zip or .tar.gz of the PEFT folder) or the parts 'adapter_config.json' and 'adapter_model.safetensors'. ?replace=true stores a new version of an existing adapter: new requests use it, running ones finish on theirs. The files are validated against the base model before they become visible.")
            .Accepts<AdapterUploadForm>("multipart/form-data")
            .Produces<AdapterInfo>(StatusCodes.Status201Created)
            .Produces<AdapterInfo>()
            .Produces<ApiError>(StatusCodes.Status400BadRequest)
            .Produces<ApiError>(StatusCodes.Status401Unauthorized)
            .Produces<ApiError>(StatusCodes.Status403Forbidden)
            .Produces<ApiError>(StatusCodes.Status409Conflict)
            .Produces<ApiError>(StatusCodes.Status413PayloadTooLarge)
            .Produces<ApiError>(StatusCodes.Status415UnsupportedMediaType);

        admin.MapDelete("/adapters/{name}", Delete)
            .WithName("DeleteAdapter")
            .WithSummary("Delete an adapter and all its versions (admin)")
            .WithDescription("409 adapter_in_use while a running sequence uses it; with ?wait=true it is withdrawn at once (new requests no longer get it) and deleted when the running ones finish.")
            .Produces<AdapterDeleted>()
            .Produces<ApiError>(StatusCodes.Status404NotFound)
            .Produces<ApiError>(StatusCodes.Status409Conflict);

        admin.MapPost("/adapters/{name}/pin", (string name, AdapterRegistry registry, IAdapterResidency residency) => Pin(name, true, registry, residency))
            .WithName("PinAdapter")
            .WithSummary("Pin an adapter in the residency cache (admin)")
            .WithDescription("A pinned adapter is never evicted from the device cache.")
            .Produces<AdapterInfo>()
            .Produces<ApiError>(StatusCodes.Status404NotFound);

        admin.MapPost("/adapters/{name}/unpin", (string name, AdapterRegistry registry, IAdapterResidency residency) => Pin(name, false, registry, residency))
            .WithName("UnpinAdapter")
            .WithSummary("Unpin an adapter (admin)")
            .WithDescription("The adapter becomes evictable again (least recently used first).")
            .Produces<AdapterInfo>()
            .Produces<ApiError>(StatusCodes.Status404NotFound);

        admin.MapPost("/load_lora_adapter", LoadLoraAdapter)
            .WithName("LoadLoraAdapter")
            .WithSummary("Register an adapter folder on the server (vLLM-compatible, admin)")
            .WithDescription("Body {\"lora_name\", \"lora_path\", \"load_inplace\"}. lora_path is a PEFT folder (or a .zip/.tar.gz) on the server; its files are copied into the store. load_inplace=true replaces an existing adapter with a new version. With --allowed-adapter-paths, a path that does not resolve (symbolic links followed) inside one of those folders is refused with 403; only regular files are read, and links out of the adapter folder are refused.")
            .Accepts<LoadLoraAdapterRequest>("application/json")
            .Produces<string>(StatusCodes.Status200OK, "text/plain")
            .Produces<ApiError>(StatusCodes.Status400BadRequest)
            .Produces<ApiError>(StatusCodes.Status403Forbidden)
            .Produces<ApiError>(StatusCodes.Status409Conflict);

        admin.MapPost("/unload_lora_adapter", UnloadLoraAdapter)
            .WithName("UnloadLoraAdapter")
            .WithSummary("Delete an adapter (vLLM-compatible, admin)")
            .WithDescription("Body {\"lora_name\"}. Like vLLM: the adapter is withdrawn at once (new requests get 404) and running requests finish on it; its files are deleted once they have.")
            .Accepts<UnloadLoraAdapterRequest>("application/json")
            .Produces<string>(StatusCodes.Status200OK, "text/plain")
            .Produces<ApiError>(StatusCodes.Status404NotFound);

        // Routing answers a body of another media type than an endpoint's Accepts with a bare 415; these
        // catch-alls (tried only when the real endpoint does not match) give it the OpenAI error shape.
        foreach (var (path, mediaType) in new[] { ("/adapters", "multipart/form-data"), ("/load_lora_adapter", "application/json"), ("/unload_lora_adapter", "application/json") })
            api.MapPost(path, (HttpContext http) => AdapterErrors.Result(StatusCodes.Status415UnsupportedMediaType,
                    $"expected a {mediaType} body (got '{http.Request.ContentType}')", "unsupported_media_type"))
                .WithOrder(int.MaxValue)
                .ExcludeFromDescription();

        return app;
    }

    private static IResult List(AdapterRegistry registry, IAdapterResidency residency) =>
        Json(new AdapterList("list", registry.List().Select(r => AdapterInfo.From(r, residency.Status(r.Name))).ToList()));

    private static IResult Get(string name, AdapterRegistry registry, IAdapterResidency residency) =>
        registry.TryResolve(name, out var record)
            ? Json(AdapterInfo.From(record, residency.Status(name), withModules: true))
            : throw AdapterStoreException.NotFound(name);

    private static IResult GetExperts(string name, AdapterRegistry registry, ExpertUsage usage)
    {
        if (!registry.TryResolve(name, out var record)) throw AdapterStoreException.NotFound(name);
        var description = record.Description;
        if (description.Experts is not { } experts)
            throw new AdapterValidationException($"adapter '{name}' is a {description.Kind} adapter: it has no experts (only mixtures such as lora_mixer and omoe do)", "not_a_mixture");
        var modules = usage.Snapshot(name)?.Modules ?? [];
        return Json(new AdapterExperts("adapter.experts", name, description.Kind.ToString(), experts, description.TopK, usage.LoadBalanceWindowSteps, modules));
    }

    private static async Task<IResult> Upload(HttpContext http, AdapterStore store, IAdapterResidency residency, [FromQuery] bool? replace, CancellationToken cancellationToken)
    {
        var commit = await AdapterUpload.ReceiveAsync(http, store, replace ?? false, cancellationToken);
        var info = AdapterInfo.From(commit.Record, residency.Status(commit.Record.Name), withModules: true);
        if (commit.Replaced is not null) return Json(info);
        http.Response.Headers.Location = $"/v1/adapters/{Uri.EscapeDataString(commit.Record.Name)}";
        return Json(info, StatusCodes.Status201Created);
    }

    private static async Task<IResult> Delete(string name, AdapterStore store, [FromQuery] bool? wait, CancellationToken cancellationToken)
    {
        var record = await store.DeleteAsync(name, wait ?? false, cancellationToken);
        return Json(new AdapterDeleted(record.Name, "adapter", true));
    }

    private static IResult Pin(string name, bool pinned, AdapterRegistry registry, IAdapterResidency residency)
    {
        if (!registry.TryResolve(name, out var record)) throw AdapterStoreException.NotFound(name);
        residency.SetPinned(name, pinned);
        return Json(AdapterInfo.From(record, residency.Status(name)));
    }

    private static async Task<IResult> LoadLoraAdapter(HttpContext http, AdapterStore store, CancellationToken cancellationToken)
    {
        var body = await ReadJsonAsync<LoadLoraAdapterRequest>(http, cancellationToken);
        if (string.IsNullOrEmpty(body.LoraName)) throw new AdapterStoreException("'lora_name' is required", "missing_field", 400, "lora_name");
        if (string.IsNullOrEmpty(body.LoraPath)) throw new AdapterStoreException("'lora_path' is required", "missing_field", 400, "lora_path");
        await VllmParam(() => store.RegisterPathAsync(body.LoraName, body.LoraPath, body.LoadInplace, cancellationToken));
        return TypedResults.Text($"Success: LoRA adapter '{body.LoraName}' added successfully.", "text/plain");
    }

    private static async Task<IResult> UnloadLoraAdapter(HttpContext http, AdapterStore store, CancellationToken cancellationToken)
    {
        var body = await ReadJsonAsync<UnloadLoraAdapterRequest>(http, cancellationToken);
        if (string.IsNullOrEmpty(body.LoraName)) throw new AdapterStoreException("'lora_name' is required", "missing_field", 400, "lora_name");
        await VllmParam(() => store.UnloadAsync(body.LoraName, cancellationToken));
        return TypedResults.Text($"Success: LoRA adapter '{body.LoraName}' removed successfully.", "text/plain");
    }

    /// <summary>vLLM's bodies name the adapter 'lora_name': errors about the name say so.</summary>
    private static async Task VllmParam(Func<Task> action)
    {
        try { await action(); }
        catch (AdapterStoreException e) when (e.Param == "name") { throw new AdapterStoreException(e.Message, e.Code, e.StatusCode, "lora_name"); }
    }

    private static async Task<T> ReadJsonAsync<T>(HttpContext http, CancellationToken cancellationToken) where T : class
    {
        if (http.Request.HasJsonContentType() is false && !string.IsNullOrEmpty(http.Request.ContentType))
            throw new AdapterStoreException($"expected an application/json body (got '{http.Request.ContentType}')", "unsupported_media_type", 415);
        try
        {
            return await JsonSerializer.DeserializeAsync<T>(http.Request.Body, AdapterJson.Options, cancellationToken)
                ?? throw new AdapterStoreException("the request body is empty or null; expected a JSON object", "invalid_json", 400);
        }
        catch (JsonException e) { throw new AdapterStoreException($"the request body is not valid JSON: {e.Message}", "invalid_json", 400); }
    }

    private static IResult Json<T>(T value, int status = StatusCodes.Status200OK) => TypedResults.Json(value, AdapterJson.Options, statusCode: status);
}
