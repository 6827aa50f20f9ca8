namespace AdapterServe.Adapters.Store;

/// <summary>A store operation that cannot proceed: unknown name (404), name taken (409), adapter in use (409).</summary>
public sealed class AdapterStoreException(string message, string code, int statusCode, string? param = null) : Exception(message)
{
    public string Code { get; } = code;
    public int StatusCode { get; } = statusCode;
    public string? Param { get; } = param;

    public static AdapterStoreException NotFound(string name) =>
        new($"adapter '{name}' does not exist", "adapter_not_found", 404, "name");
}
