using System.Text.Json;
using System.Text.Json.Nodes;

namespace AdapterServe.Modeling;

/// <summary>RoPE scaling from config.json (<c>rope_scaling</c>). Unknown types are rejected, never ignored.</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositionEmbeddings = 8192);

/// <summary>The fields of a Hugging Face Llama-family <c>config.json</c> that the forward pass needs.</summary>
public sealed record ModelConfig
{
    public string Architecture { get; init; } = "LlamaForCausalLM";
    public required int HiddenSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int IntermediateSize { get; init; }
    public required int VocabSize { get; init; }
    public int HeadDim { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000;
    public RopeScaling? RopeScaling { get; init; }
    public bool AttentionBias { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public string TorchDtype { get; init; } = "float32";

    public static readonly string[] SupportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

    /// <summary>Input and output width of each adapted projection, for adapter validation.</summary>
    public (int In, int Out) ProjectionShape(Projection p) => p switch
    {
        Projection.Q => (HiddenSize, NumAttentionHeads * HeadDim),
        Projection.K or Projection.V => (HiddenSize, NumKeyValueHeads * HeadDim),
        Projection.O => (NumAttentionHeads * HeadDim, HiddenSize),
        Projection.Gate or Projection.Up => (HiddenSize, IntermediateSize),
        Projection.Down => (IntermediateSize, HiddenSize),
        _ => throw new ArgumentOutOfRangeException(nameof(p)),
    };

    public static ModelConfig Load(string path)
    {
        JsonNode root;
        try { root = JsonNode.Parse(File.ReadAllText(path)) ?? throw new InvalidDataException("config.json is empty"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
        return Parse(root.AsObject(), path);
    }

    public static ModelConfig Parse(JsonObject o, string source = "config.json")
    {
        string arch = o["architectures"]?.AsArray().FirstOrDefault()?.GetValue<string>()
            ?? (o["model_type"]?.GetValue<string>() switch { "mistral" => "MistralForCausalLM", "qwen2" => "Qwen2ForCausalLM", _ => "LlamaForCausalLM" });
        if (!SupportedArchitectures.Contains(arch))
            throw new InvalidDataException($"{source}: architecture '{arch}' is not supported (supported: {string.Join(", ", SupportedArchitectures)})");

        int Req(string key) => o[key]?.GetValue<int>() ?? throw new InvalidDataException($"{source}: missing required field '{key}'");
        int hidden = Req("hidden_size"), heads = Req("num_attention_heads");
        int kvHeads = o["num_key_value_heads"]?.GetValue<int>() ?? heads;
        int headDim = o["head_dim"]?.GetValue<int?>() ?? hidden / heads;
        if (heads % kvHeads != 0) throw new InvalidDataException($"{source}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kvHeads})");
        if (headDim % 2 != 0) throw new InvalidDataException($"{source}: head_dim ({headDim}) must be even for rotary embeddings");

        var eos = new List<int>();
        switch (o["eos_token_id"])
        {
            case JsonArray a: eos.AddRange(a.Select(x => x!.GetValue<int>())); break;
            case JsonValue v: eos.Add(v.GetValue<int>()); break;
        }

        return new ModelConfig
        {
            Architecture = arch,
            HiddenSize = hidden,
            NumHiddenLayers = Req("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            IntermediateSize = Req("intermediate_size"),
            VocabSize = Req("vocab_size"),
            HeadDim = headDim,
            RmsNormEps = o["rms_norm_eps"]?.GetValue<double>() ?? 1e-6,
            RopeTheta = o["rope_theta"]?.GetValue<double>() ?? 10000,
            RopeScaling = ParseRopeScaling(o["rope_scaling"] as JsonObject, source),
            // Qwen2 always has q/k/v biases; Llama and Mistral say so with attention_bias.
            AttentionBias = o["attention_bias"]?.GetValue<bool>() ?? arch == "Qwen2ForCausalLM",
            TieWordEmbeddings = o["tie_word_embeddings"]?.GetValue<bool>() ?? false,
            MaxPositionEmbeddings = o["max_position_embeddings"]?.GetValue<int>() ?? 2048,
            BosTokenId = o["bos_token_id"]?.GetValue<int?>(),
            EosTokenIds = eos,
            TorchDtype = o["torch_dtype"]?.GetValue<string>() ?? "float32",
        };
    }

    private static RopeScaling? ParseRopeScaling(JsonObject? rs, string source)
    {
        if (rs is null) return null;
        string type = (rs["rope_type"] ?? rs["type"])?.GetValue<string>() ?? throw new InvalidDataException($"{source}: rope_scaling has no 'rope_type'");
        double factor = rs["factor"]?.GetValue<double>() ?? 1.0;
        return type switch
        {
            "default" => null,
            "linear" => new RopeScaling("linear", factor),
            "llama3" => new RopeScaling("llama3", factor,
                rs["low_freq_factor"]?.GetValue<double>() ?? 1.0,
                rs["high_freq_factor"]?.GetValue<double>() ?? 4.0,
                rs["original_max_position_embeddings"]?.GetValue<int>() ?? 8192),
            _ => throw new InvalidDataException($"{source}: rope_scaling type '{type}' is not supported (supported: linear, llama3)"),
        };
    }

    /// <summary>The config.json a Hugging Face <c>LlamaForCausalLM</c> would write for this configuration.</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(Architecture),
            ["model_type"] = Architecture switch { "MistralForCausalLM" => "mistral", "Qwen2ForCausalLM" => "qwen2", _ => "llama" },
            ["hidden_size"] = HiddenSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["head_dim"] = HeadDim,
            ["intermediate_size"] = IntermediateSize,
            ["vocab_size"] = VocabSize,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["attention_bias"] = AttentionBias,
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["torch_dtype"] = TorchDtype,
        };
        if (BosTokenId is int bos) o["bos_token_id"] = bos;
        if (EosTokenIds.Count == 1) o["eos_token_id"] = EosTokenIds[0];
        else if (EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(EosTokenIds.Select(x => (JsonNode)x).ToArray());
        if (RopeScaling is { } r)
        {
            var rs = new JsonObject { ["rope_type"] = r.Type, ["factor"] = r.Factor };
            if (r.Type == "llama3")
            {
                rs["low_freq_factor"] = r.LowFreqFactor;
                rs["high_freq_factor"] = r.HighFreqFactor;
                rs["original_max_position_embeddings"] = r.OriginalMaxPositionEmbeddings;
            }
            o["rope_scaling"] = rs;
        }
        return o;
    }

    public static readonly JsonSerializerOptions JsonWriteOptions = new() { WriteIndented = true };
}
