using System.Security.Cryptography;
using System.Text;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Store;

/// <summary>
/// The folder name that keeps one base model's adapters apart from another's: the served model id (letters, digits,
/// '-', '_', '.' kept, the rest '_') and the first 12 hex digits of the SHA-256 of its config.json as this server reads it,
/// e.g. <c>demo-3f9a0c12be47</c>. Two bases with the same id but another shape, or the same shape under another id, get
/// separate stores.
/// </summary>
public static class BaseModelIdentity
{
    public static string Of(string modelId, ModelConfig config)
    {
        string name = new(modelId.Take(64).Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_').ToArray());
        if (name.Length == 0 || name.All(c => c == '.')) name = "base";
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(config.ToJson().ToJsonString())))[..12];
        return $"{name}-{hash}";
    }
}
