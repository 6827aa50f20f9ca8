using AdapterServe.Adapters.Kinds.Lora;
using System.Text.Json.Nodes;
using AdapterServe.Adapters.Store;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>
/// Strict reading of a mixture kind's <c>adapter_config.json</c> (LoRA-Mixer, OMoE): every field is either known and
/// honoured, a known piece of PEFT bookkeeping that does not change serving, or refused with a 400 naming it.
/// </summary>
internal sealed class MixtureConfigFields
{
    /// <summary>PEFT bookkeeping fields that do not change what is served.</summary>
    private static readonly HashSet<string> Bookkeeping = ["base_model_name_or_path", "revision", "task_type", "inference_mode",
        "peft_version", "auto_mapping", "library_name"];

    private readonly JsonObject _o;
    private readonly string _file;
    private readonly HashSet<string> _read = [];

    private MixtureConfigFields(JsonObject o, string file)
    {
        _o = o;
        _file = file;
    }

    public static MixtureConfigFields Load(string path, string fileName) => new(PeftConfigReader.LoadObject(path, fileName), fileName);

    public static MixtureConfigFields From(JsonObject o, string fileName) => new(o, fileName);

    /// <summary>Refuses every field that was not read and is not bookkeeping (call after reading all known fields).</summary>
    public void RefuseUnread(string kind)
    {
        foreach (var (key, value) in _o)
        {
            if (_read.Contains(key) || Bookkeeping.Contains(key) || value is null) continue;
            throw new AdapterValidationException($"{_file}: field '{key}' is not supported for {kind}; refusing rather than serving it wrongly", "unsupported_adapter_feature");
        }
    }

    public string? String(string field) => Take(field) switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw Invalid($"{_file}: field '{field}' must be a string (got {other.ToJsonString()})"),
    };

    public bool? Bool(string field) => Take(field) switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out bool b) => b,
        var other => throw Invalid($"{_file}: field '{field}' must be true or false (got {other.ToJsonString()})"),
    };

    public int? Int(string field) => Take(field) switch
    {
        null => null,
        JsonValue v when v.TryGetValue<int>(out int i) => i,
        JsonValue v when v.TryGetValue<double>(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue => (int)d,
        var other => throw Invalid($"{_file}: field '{field}' must be an integer (got {other.ToJsonString()})"),
    };

    public double? Number(string field) => Take(field) switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out double d) && double.IsFinite(d) => d,
        var other => throw Invalid($"{_file}: field '{field}' must be a finite number (got {other.ToJsonString()})"),
    };

    public IReadOnlyList<string>? Strings(string field) => Take(field) switch
    {
        null => null,
        JsonArray a => a.Select(x => x is JsonValue jv && jv.TryGetValue<string>(out var s) ? s
            : throw Invalid($"{_file}: field '{field}' must hold strings (got {x?.ToJsonString() ?? "null"})")).ToList(),
        var other => throw Invalid($"{_file}: field '{field}' must be a list of strings (got {other.ToJsonString()})"),
    };

    /// <summary>target_modules as PEFT reads it: a list of names, a full-match regular expression, or "all-linear".</summary>
    public ModuleSelector? Selector(string field) => Take(field) switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s == "all-linear" ? new ModuleSelector.AllLinear()
            : PeftPatterns.IsValidRegex(s, out var error) ? new ModuleSelector.FullMatch(s)
            : throw Invalid($"{_file}: {field} '{s}' is not a valid regular expression: {error}"),
        JsonArray a => new ModuleSelector.NameList(a.Select(x => x is JsonValue jv && jv.TryGetValue<string>(out var name) ? name
            : throw Invalid($"{_file}: {field} must hold strings (got {x?.ToJsonString() ?? "null"})")).ToList()),
        var other => throw Invalid($"{_file}: {field} must be a list of names, a regular expression or \"all-linear\" (got {other.ToJsonString()})"),
    };

    public AdapterValidationException Field(string field, string problem) => Invalid($"{_file}: field '{field}' {problem}");

    private JsonNode? Take(string field)
    {
        _read.Add(field);
        return _o[field];
    }

    private static AdapterValidationException Invalid(string message, string code = "invalid_adapter_config") => new(message, code);
}
