using System.Text.Json.Nodes;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Smore;

/// <summary>The shape of a test S'MoRE adapter; lists are per sub-layer, 0 = leaf.</summary>
public sealed record SmoreShape(int[] Experts, int[] Active, int[] Ranks, int[] GateDims, int DownDim = 6,
    string GateType = "switch", string ExpertAct = "tanh", string GateAct = "relu", string Position = "all", double[]? Alpha = null)
{
    public int Levels => Experts.Length;
    public int FanOut(int l) => GateType == "dense" ? Experts[l] : Active[l];
    /// <summary>d_l written out from methods.md §4.3: d_0 = 0, d_{l+1} = d_l + s_l·r_l.</summary>
    public int Dim(int l) => Enumerable.Range(0, l).Sum(i => Experts[i] * Ranks[i]);
    public double Scaling(int l) => Alpha is null ? 1.0 : Alpha[l] / Ranks[l];
}

/// <summary>
/// Writes S'MoRE adapters the way the official fork names them (methods.md §4.3): an <c>adapter_config.json</c> object and
/// tensors under <c>base_model.model.&lt;module&gt;.moe_*</c>, random, with shapes written out here from the method's
/// description (not from the code under test).
/// </summary>
public sealed class SmoreTestAdapter
{
    public JsonObject Config { get; }
    public Dictionary<string, Tensor> Tensors { get; } = [];
    public SmoreShape Shape { get; }

    public SmoreTestAdapter(SmoreShape shape, ModelConfig baseModel, IReadOnlyList<(int Layer, Projection Projection)> modules, int seed = 1)
    {
        Shape = shape;
        Config = new JsonObject
        {
            ["peft_type"] = "HIER_MOE", ["task_type"] = "CAUSAL_LM", ["moe_arch"] = "smore",
            ["num_experts"] = Ints(shape.Experts), ["num_active"] = Ints(shape.Active), ["expert_dims"] = Ints(shape.Ranks),
            ["gate_dims"] = Ints(shape.GateDims), ["lora_alpha"] = shape.Alpha is null ? null : new JsonArray(shape.Alpha.Select(a => (JsonNode)a).ToArray()),
            ["dim_downproj_x"] = shape.DownDim, ["gate_type"] = shape.GateType, ["gate_arch"] = "mlp",
            ["gate_act_fn"] = shape.GateAct, ["expert_act_fn"] = shape.ExpertAct, ["activation_position"] = shape.Position,
            ["layer_forward_mode"] = "subgraph", ["balance_loss_weight"] = 0.01, ["init_method"] = "b_zero",
            ["is_shared_expert_pool"] = false, ["moe_dropout"] = 0.0, ["bias"] = "none", ["modules_to_save"] = null,
            ["inference_mode"] = true,
            ["target_modules"] = new JsonArray(modules.Select(m => m.Projection.ShortName()).Distinct().Select(n => (JsonNode)n).ToArray()),
        };
        using var generator = new Generator((ulong)seed);
        foreach (var (layer, projection) in modules)
        {
            var (dIn, dOut) = baseModel.ProjectionShape(projection);
            string prefix = Prefix(layer, projection);
            void Add(string suffix, long[] dims, double std) =>
                Tensors[$"{prefix}.{suffix}"] = randn(dims, generator: generator).mul(std).DetachFromDisposeScope();

            int down = shape.DownDim > 0 ? shape.DownDim : dIn;
            Add("moe_downproj_x.weight", [down, dIn], 0.5);
            Add("moe_downproj_x.bias", [down], 0.2);
            for (int l = 0; l < shape.Levels; l++)
            {
                int s = shape.Experts[l], r = shape.Ranks[l], g = shape.GateDims[l];
                int gateIn = down + Enumerable.Range(l + 1, shape.Levels - l - 1).Sum(i => shape.GateDims[i]);
                Add($"moe_A.{l}", [s, r, dIn], 0.4);
                Add($"moe_A_bias.{l}", [s, r], 0.1);
                Add($"moe_B.{l}", [s, shape.Dim(l + 1), r], 0.4);
                Add($"moe_B_bias.{l}", [s, shape.Dim(l + 1)], 0.1);
                if (l >= 1)
                {
                    Add($"moe_W.{l}", [shape.Dim(l + 1), shape.Dim(l)], 0.4);
                    Add($"moe_W_bias.{l}", [shape.Dim(l + 1)], 0.1);
                }
                if (shape.ExpertAct.StartsWith("prelu", StringComparison.Ordinal))
                    Tensors[$"{prefix}.moe_expert_act_param.{l}"] = tensor(new[] { 0.2f + 0.05f * l }).DetachFromDisposeScope();
                Add($"moe_gate.{l}.mlp.0.weight", [g, gateIn], 0.8);
                Add($"moe_gate.{l}.mlp.0.bias", [g], 0.2);
                if (shape.GateAct.StartsWith("prelu", StringComparison.Ordinal))
                    Tensors[$"{prefix}.moe_gate.{l}.mlp.1.weight"] = tensor(new[] { 0.3f + 0.1f * l }).DetachFromDisposeScope();
                Add($"moe_gate.{l}.mlp.2.weight", [g, g], 0.8);
                Add($"moe_gate.{l}.mlp.2.bias", [g], 0.2);
                Add($"moe_gate.{l}.keys", [s, g], 1.0);
                if (shape.GateType == "noisy_topk") Add($"moe_gate.{l}.weight_noise.weight", [s, gateIn], 0.0);
            }
            Add("moe_W_final", [dOut, shape.Dim(shape.Levels)], 0.3);
            Add("moe_W_final_bias", [dOut], 0.1);
        }
    }

    public static string Prefix(int layer, Projection p) => "base_model.model." + ProjectionNames.ModulePath(layer, p);

    /// <summary>Writes adapter_config.json and adapter_model.safetensors into <paramref name="directory"/>.</summary>
    public string Write(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), Config.ToJsonString());
        SafetensorsWriter.Write(Path.Combine(directory, "adapter_model.safetensors"), Tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return directory;
    }

    /// <summary>A fresh temporary directory holding this adapter.</summary>
    public string WriteTemp() => Write(Path.Combine(Path.GetTempPath(), "adapterserve-tests", "smore", Guid.NewGuid().ToString("N")));

    /// <summary>Module-relative lookup (<c>moe_A.0</c> → tensor) for one module, as the loader asks for it.</summary>
    public Func<string, Tensor?> Module(int layer, Projection p) => suffix => Tensors.GetValueOrDefault($"{Prefix(layer, p)}.{suffix}");

    private static JsonArray Ints(int[] values) => new(values.Select(v => (JsonNode)v).ToArray());
}

/// <summary>
/// The independent reference: S'MoRE evaluated for ONE token by recursion over the tree (methods.md §4.3 and the
/// official layer), in double precision on plain arrays, with explicit sorting for the top-k. Records the experts each
/// sub-layer selects, in the order the tree visits them (parents in selection order, then their children).
/// </summary>
public sealed class NaiveSmore
{
    private readonly SmoreShape _shape;
    private readonly Func<string, Tensor?> _tensor;
    private readonly Dictionary<string, (double[] Values, long[] Shape)> _cache = [];

    public NaiveSmore(SmoreShape shape, Func<string, Tensor?> tensor)
    {
        _shape = shape;
        _tensor = tensor;
    }

    /// <summary>The delta for one token, and per sub-layer the selected experts in visiting order.</summary>
    public (double[] Delta, List<int>[] Selected) Token(double[] x)
    {
        var selected = Enumerable.Range(0, _shape.Levels).Select(_ => new List<int>()).ToArray();
        var routerInput = Affine("moe_downproj_x.weight", "moe_downproj_x.bias", x);
        var top = Combine(_shape.Levels - 1, routerInput, x, selected);
        return (Affine("moe_W_final", "moe_W_final_bias", top), selected);
    }

    /// <summary>x_{l+1} of one parent path whose sub-layer-l router sees <paramref name="routerInput"/>.</summary>
    private double[] Combine(int l, double[] routerInput, double[] x, List<int>[] selected)
    {
        var picks = Select(l, routerInput);
        var sum = new double[_shape.Dim(l + 1)];
        foreach (var (expert, alpha) in picks)
        {
            selected[l].Add(expert);
            // u = sc·(B_e(A_e x + a_e) + b_e)
            var hidden = Add(MatVec(Slice($"moe_A.{l}", expert), x), Row($"moe_A_bias.{l}", expert));
            var u = Scale(Add(MatVec(Slice($"moe_B.{l}", expert), hidden), Row($"moe_B_bias.{l}", expert)), _shape.Scaling(l));
            double[] term;
            if (l == 0)
                term = _shape.Position == "all" ? Scale(Act(u, l), alpha) : Scale(u, alpha);
            else
            {
                var keys = Row($"moe_gate.{l}.keys", expert);
                if (_shape.GateType == "noisy_topk") keys = Scale(keys, 1.0 / Norm(keys));
                var children = Combine(l - 1, [.. routerInput, .. keys], x, selected);     // x_l(e)
                var fromChildren = Add(MatVec(Get($"moe_W.{l}"), _shape.Position == "all" ? children : Act(children, l)), Get($"moe_W_bias.{l}").Values);
                term = _shape.Position switch
                {
                    "all" => Scale(Act(Add(u, fromChildren), l), alpha),
                    "child" => Add(Scale(u, alpha), fromChildren),
                    _ => Scale(Add(u, fromChildren), alpha),
                };
            }
            for (int i = 0; i < sum.Length; i++) sum[i] += term[i];
        }
        return sum;
    }

    /// <summary>The router of sub-layer l: (expert, weight) in descending score order.</summary>
    private List<(int Expert, double Weight)> Select(int l, double[] input)
    {
        var hidden = GateAct(Affine($"moe_gate.{l}.mlp.0.weight", $"moe_gate.{l}.mlp.0.bias", input), l);
        var query = Affine($"moe_gate.{l}.mlp.2.weight", $"moe_gate.{l}.mlp.2.bias", hidden);
        int s = _shape.Experts[l], f = _shape.Active[l];
        var logits = new double[s];
        for (int e = 0; e < s; e++)
        {
            var key = Row($"moe_gate.{l}.keys", e);
            logits[e] = _shape.GateType == "noisy_topk" ? Dot(query, key) / (Norm(query) * Norm(key)) : Dot(query, key);
        }
        var order = Enumerable.Range(0, s).OrderByDescending(e => logits[e]).ToList();
        switch (_shape.GateType)
        {
            case "switch":
            {
                var p = Softmax(logits);
                var top = order.Take(f).ToList();
                double total = f > 1 ? top.Sum(e => p[e]) : 1.0;
                return top.Select(e => (e, p[e] / total)).ToList();
            }
            case "noisy_topk":
            {
                var top = order.Take(f).ToList();
                if (f == 1) return [(top[0], logits[top[0]])];
                var p = Softmax(top.Select(e => logits[e]).ToArray());
                return top.Select((e, i) => (e, p[i])).ToList();
            }
            default:
            {
                var p = Softmax(logits);
                return Enumerable.Range(0, s).Select(e => (e, p[e])).ToList();
            }
        }
    }

    private double[] Act(double[] v, int l)
    {
        string act = _shape.ExpertAct;
        double slope = act.StartsWith("prelu", StringComparison.Ordinal) ? Get($"moe_expert_act_param.{l}").Values[0] : 0;
        return v.Select(a => act switch
        {
            "identity" => a,
            "tanh" => Math.Tanh(a),
            "relu" => Math.Max(a, 0),
            _ => a >= 0 ? a : slope * a,
        }).ToArray();
    }

    private double[] GateAct(double[] v, int l)
    {
        string act = _shape.GateAct;
        return v.Select(a => act switch
        {
            "identity" => a,
            "tanh" => Math.Tanh(a),
            "relu" => Math.Max(a, 0),
            _ => a >= 0 ? a : Get($"moe_gate.{l}.mlp.1.weight").Values[0] * a,
        }).ToArray();
    }

    private (double[] Values, long[] Shape) Get(string suffix)
    {
        if (_cache.TryGetValue(suffix, out var hit)) return hit;
        var t = _tensor(suffix) ?? throw new InvalidOperationException($"test adapter has no {suffix}");
        var values = t.to(ScalarType.Float64).contiguous().data<double>().ToArray();
        return _cache[suffix] = (values, t.shape);
    }

    /// <summary>Matrix e of a stacked <c>[s, rows, cols]</c> tensor.</summary>
    private (double[] Values, long[] Shape) Slice(string suffix, int e)
    {
        var (values, shape) = Get(suffix);
        long size = shape[1] * shape[2];
        return (values.Skip((int)(e * size)).Take((int)size).ToArray(), [shape[1], shape[2]]);
    }

    private double[] Row(string suffix, int e)
    {
        var (values, shape) = Get(suffix);
        return values.Skip((int)(e * shape[1])).Take((int)shape[1]).ToArray();
    }

    private double[] Affine(string weight, string bias, double[] v) => Add(MatVec(Get(weight), v), Get(bias).Values);

    private static double[] MatVec((double[] Values, long[] Shape) m, double[] v)
    {
        int rows = (int)m.Shape[0], cols = (int)m.Shape[1];
        if (cols != v.Length) throw new InvalidOperationException($"matrix [{rows}, {cols}] times vector [{v.Length}]");
        var result = new double[rows];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) result[i] += m.Values[i * cols + j] * v[j];
        return result;
    }

    private static double[] Add(double[] a, double[] b) => a.Zip(b, (p, q) => p + q).ToArray();
    private static double[] Scale(double[] a, double s) => a.Select(v => v * s).ToArray();
    private static double Dot(double[] a, double[] b) => a.Zip(b, (p, q) => p * q).Sum();
    private static double Norm(double[] a) => Math.Sqrt(Dot(a, a));

    private static double[] Softmax(double[] logits)
    {
        double max = logits.Max();
        var e = logits.Select(v => Math.Exp(v - max)).ToArray();
        double total = e.Sum();
        return e.Select(v => v / total).ToArray();
    }
}
