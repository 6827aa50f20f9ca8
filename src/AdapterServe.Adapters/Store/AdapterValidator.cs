using System.Buffers.Binary;
using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;

namespace AdapterServe.Adapters.Store;

/// <param name="ScanWeights">Read every weight and refuse NaN/Inf (false: config and header only, for listing at start).</param>
/// <param name="DefaultKasaTruncation">KaSA truncation when the adapter's config does not say: "peft" or "official".</param>
/// <param name="Registered">The current stored version of a registered adapter by name (a LoRA-Mixer's referenced experts), or null.</param>
public sealed record AdapterValidationOptions(bool ScanWeights = true, string DefaultKasaTruncation = "peft", Func<string, AdapterRecord?>? Registered = null);

/// <summary>
/// Checks an adapter directory against the base model and describes it: reads <c>adapter_config.json</c>, picks the
/// kind by its <c>peft_type</c> and lets that kind validate the rest (methods.md §1, §2, §5). Any problem is an
/// <see cref="AdapterValidationException"/> naming the file, field or tensor. Also the checks every kind shares.
/// </summary>
public static class AdapterValidator
{
    public const string ConfigFileName = AdapterFiles.ConfigFileName;
    public const string WeightsFileName = AdapterFiles.WeightsFileName;
    /// <summary>PyTorch pickle weights: never loaded, only recognised to say why an adapter is refused.</summary>
    public const string PickleFileName = "adapter_model.bin";
    /// <summary>PEFT's prefix of every adapter tensor key.</summary>
    public const string KeyPrefix = "base_model.model.";

    /// <summary>Validates with the built-in kinds.</summary>
    public static AdapterDescription Validate(string directory, ModelConfig baseModel, AdapterValidationOptions? options = null) =>
        Validate(directory, baseModel, AdapterKinds.BuiltIn, options);

    public static AdapterDescription Validate(string directory, ModelConfig baseModel, AdapterKinds kinds, AdapterValidationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(kinds);
        options ??= new AdapterValidationOptions();
        var config = ReadConfig(directory);
        return KindOf(config, kinds).Describe(directory, config, baseModel, options);
    }

    /// <summary>The kind that serves <paramref name="config"/>'s <c>peft_type</c>.</summary>
    public static IAdapterKindHandler KindOf(JsonObject config, AdapterKinds kinds)
    {
        string supported = string.Join(", ", kinds.PeftTypes);
        string peftType = config["peft_type"] switch
        {
            null => throw new AdapterValidationException($"{ConfigFileName}: field 'peft_type' is missing (expected one of: {supported})", "invalid_adapter_config"),
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            var other => throw new AdapterValidationException($"{ConfigFileName}: field 'peft_type' must be a string (got {other.ToJsonString()})", "invalid_adapter_config"),
        };
        return kinds.TryFind(peftType, out var kind) ? kind
            : throw new AdapterValidationException($"{ConfigFileName}: peft_type '{peftType}' is not supported (supported: {supported})", "unsupported_adapter_feature");
    }

    /// <summary>Tensor dtypes an adapter file may hold (converted to the served dtype on load), for every kind.</summary>
    public static IReadOnlyList<SafetensorsDType> ServedDTypes { get; } = [SafetensorsDType.F32, SafetensorsDType.F16, SafetensorsDType.BF16];

    /// <summary>Reads <c>adapter_config.json</c> of <paramref name="directory"/> as a JSON object (comments and trailing commas allowed, at most 16 MiB).</summary>
    public static JsonObject ReadConfig(string directory) => Kinds.PeftConfigReader.LoadObject(Path.Combine(directory, ConfigFileName), ConfigFileName);

    /// <summary>Opens <paramref name="fileName"/> of <paramref name="directory"/>; a bad header is a 400 naming the file (not the path).</summary>
    public static SafetensorsFile OpenSafetensors(string directory, string fileName)
    {
        string path = Path.Combine(directory, fileName);
        try { return SafetensorsFile.Open(path); }
        catch (SafetensorsFormatException e)
        {
            throw new AdapterValidationException($"{fileName}: {e.Message.Replace(path, fileName)}", "invalid_safetensors");
        }
        catch (IOException e) { throw new AdapterValidationException($"{fileName} cannot be read: {e.Message.Replace(path, fileName)}", "invalid_safetensors"); }
    }

    /// <summary>Reads every tensor's bytes of <paramref name="fileName"/> (as stored, no conversion) and refuses the first NaN or ±Inf.</summary>
    public static void RefuseNonFinite(string directory, string fileName, IEnumerable<SafetensorsEntry> entries)
    {
        string path = Path.Combine(directory, fileName);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        long dataStart = 8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        var buffer = new byte[1 << 20];
        foreach (var entry in entries.OrderBy(e => e.Begin))
        {
            int size = entry.DType == SafetensorsDType.F32 ? 4 : 2;
            stream.Position = dataStart + entry.Begin;
            long remaining = entry.End - entry.Begin, element = 0;
            while (remaining > 0)
            {
                int chunk = (int)Math.Min(buffer.Length - buffer.Length % size, remaining);
                stream.ReadExactly(buffer, 0, chunk);
                for (int i = 0; i < chunk; i += size, element++)
                {
                    string? bad = entry.DType switch
                    {
                        SafetensorsDType.F32 => NonFinite(BinaryPrimitives.ReadUInt32LittleEndian(buffer.AsSpan(i)), 0x7F800000u, 0x007FFFFFu),
                        SafetensorsDType.F16 => NonFinite(BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(i)), 0x7C00u, 0x03FFu),
                        _ => NonFinite(BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(i)), 0x7F80u, 0x007Fu),
                    };
                    if (bad is not null) throw new AdapterValidationException($"{fileName}: tensor '{entry.Name}' holds {bad} (element {element}); weights must be finite", "non_finite_weights");
                }
                remaining -= chunk;
            }
        }
    }

    /// <summary>"NaN", "Inf" or null, from the exponent (all ones) and mantissa bits of an IEEE value.</summary>
    private static string? NonFinite(uint bits, uint exponentMask, uint mantissaMask) =>
        (bits & exponentMask) != exponentMask ? null : (bits & mantissaMask) != 0 ? "NaN" : "Inf";
}
