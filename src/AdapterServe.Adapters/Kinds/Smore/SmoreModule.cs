using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// The served tensors of one sub-layer (level) of an S'MoRE module, precomputed at load for the fused forward:
/// all experts' down-projections stacked into one matrix, the scaling <c>sc_l</c> folded into B and its bias, B laid out
/// for one batched GEMM over experts, and the router's keys already normalised when the gate is cosine (noisy_topk).
/// </summary>
public sealed class SmoreLevel : IDisposable
{
    internal SmoreLevel(int experts, int rank, int fanOut, int dimIn, int dimOut, int gateDim, int inputOffset, Tensor labels,
        Tensor b, Tensor bBias, Tensor? w, Tensor? wBias, Tensor? slope,
        Tensor gateIn, Tensor gateInBias, Tensor? gateSlope, Tensor gateOut, Tensor gateOutBias, Tensor keys, Tensor? allIds)
    {
        Experts = experts; Rank = rank; FanOut = fanOut; DimIn = dimIn; DimOut = dimOut; GateDim = gateDim; InputOffset = inputOffset; Labels = labels;
        B = b; BBias = bBias; W = w; WBias = wBias; Slope = slope;
        GateIn = gateIn; GateInBias = gateInBias; GateSlope = gateSlope; GateOut = gateOut; GateOutBias = gateOutBias; Keys = keys; AllIds = allIds;
    }

    /// <summary>s_l.</summary>
    public int Experts { get; }
    /// <summary>r_l.</summary>
    public int Rank { get; }
    /// <summary>Children per parent path: f_l, or s_l for the dense gate.</summary>
    public int FanOut { get; }
    /// <summary>d_l (0 at the leaf).</summary>
    public int DimIn { get; }
    /// <summary>d_{l+1}.</summary>
    public int DimOut { get; }
    public int GateDim { get; }

    /// <summary>
    /// Where this sub-layer's experts start in the module's stacked input projection: columns
    /// <c>[InputOffset, InputOffset + s·r)</c> of <c>x @ Inputᵀ</c> are <c>A_e x + a_e</c>, expert e owning r of them in order.
    /// </summary>
    public int InputOffset { get; }
    /// <summary><c>[s]</c> int64: the accounting label of expert e of this sub-layer, Σ s_{l'} over the sub-layers below + e.</summary>
    public Tensor Labels { get; }
    /// <summary><c>sc_l · B_lᵀ</c> per expert: <c>[s, r, d_{l+1}]</c>.</summary>
    public Tensor B { get; }
    /// <summary><c>sc_l · b_l</c>: <c>[s, 1, d_{l+1}]</c>.</summary>
    public Tensor BBias { get; }
    /// <summary><c>W_l [d_{l+1}, d_l]</c> for l ≥ 1.</summary>
    public Tensor? W { get; }
    /// <summary><c>[d_{l+1}]</c> for l ≥ 1.</summary>
    public Tensor? WBias { get; }
    /// <summary>PReLU slope of σ: <c>[1]</c>.</summary>
    public Tensor? Slope { get; }
    /// <summary>Router <c>mlp.0</c>: <c>[d_g, gate input]</c>.</summary>
    public Tensor GateIn { get; }
    public Tensor GateInBias { get; }
    /// <summary>Router PReLU slope <c>[1]</c> (<c>mlp.1</c>).</summary>
    public Tensor? GateSlope { get; }
    /// <summary>Router <c>mlp.2</c>: <c>[d_g, d_g]</c>.</summary>
    public Tensor GateOut { get; }
    public Tensor GateOutBias { get; }
    /// <summary>Keys <c>[s, d_g]</c>, L2-normalised per row for the cosine (noisy_topk) gate: what children's routers see.</summary>
    public Tensor Keys { get; }
    /// <summary>Dense gate: <c>[s]</c> = 0 … s − 1 (int64), every expert selected.</summary>
    public Tensor? AllIds { get; }

    internal IEnumerable<Tensor> All => new[] { Labels, B, BBias, W, WBias, Slope, GateIn, GateInBias, GateSlope, GateOut, GateOutBias, Keys, AllIds }.OfType<Tensor>();

    internal SmoreLevel To(Device device)
    {
        static Tensor? Copy(Tensor? t, Device device) => t?.to(t.dtype, device, copy: true).DetachFromDisposeScope();
        return new SmoreLevel(Experts, Rank, FanOut, DimIn, DimOut, GateDim, InputOffset, Copy(Labels, device)!, Copy(B, device)!, Copy(BBias, device)!,
            Copy(W, device), Copy(WBias, device), Copy(Slope, device), Copy(GateIn, device)!, Copy(GateInBias, device)!, Copy(GateSlope, device),
            Copy(GateOut, device)!, Copy(GateOutBias, device)!, Copy(Keys, device)!, Copy(AllIds, device));
    }

    public void Dispose()
    {
        foreach (var t in All) t.Dispose();
    }
}

/// <summary>
/// One S'MoRE-adapted projection of one layer, loaded: everything that reads the token stacked into ONE input projection
/// (the router's down-projection, then every sub-layer's experts' A, leaf first), one <see cref="SmoreLevel"/> per
/// sub-layer (0 = leaf) and the final projection <c>W_final [d_out, d_L]</c>. Tensors are float32 (routing and the
/// tree run in float32; the output is cast to the activation dtype) on one device, owned by this object.
/// </summary>
public sealed class SmoreModule : IDisposable
{
    private SmoreModule(int layer, Projection projection, SmoreConfig config, int downDim, Tensor input, Tensor inputBias, SmoreLevel[] levels, Tensor finalW, Tensor finalB)
    {
        Layer = layer; Projection = projection; Config = config; DownDim = downDim;
        Input = input; InputBias = inputBias; Levels = levels; FinalW = finalW; FinalB = finalB;
        Bytes = new[] { input, inputBias, finalW, finalB }.Concat(levels.SelectMany(l => l.All)).Sum(t => t.NumberOfElements * t.ElementSize);
    }

    public int Layer { get; }
    public Projection Projection { get; }
    public SmoreConfig Config { get; }
    /// <summary>d_down: the first d_down columns of <c>x @ Inputᵀ</c> are the router's down-projected token.</summary>
    public int DownDim { get; }
    /// <summary><c>[d_down + Σ s_l·r_l, d_in]</c>: <c>moe_downproj_x.weight</c>, then every <c>moe_A.{l}</c> reshaped to <c>[s_l·r_l, d_in]</c>.</summary>
    public Tensor Input { get; }
    /// <summary><c>[d_down + Σ s_l·r_l]</c>: the matching biases.</summary>
    public Tensor InputBias { get; }
    public IReadOnlyList<SmoreLevel> Levels { get; }
    /// <summary><c>[d_out, d_L]</c>.</summary>
    public Tensor FinalW { get; }
    /// <summary><c>[d_out]</c>.</summary>
    public Tensor FinalB { get; }
    public long Bytes { get; }
    public int InFeatures => (int)Input.size(1);
    public int OutFeatures => (int)FinalW.size(0);

    /// <summary>
    /// Builds the served tensors of one module from the stored ones. <paramref name="stored"/> returns the tensor stored
    /// under a module-relative key (<c>moe_A.0</c>, …) or null; every shape is checked against <see cref="SmoreLayout"/>.
    /// </summary>
    /// <param name="describe">Names the module in errors, e.g. the full key prefix.</param>
    public static SmoreModule FromTensors(SmoreConfig config, int layer, Projection projection, int dIn, int dOut,
        Func<string, Tensor?> stored, Device device, string describe)
    {
        using var inferenceOff = inference_mode(false);
        using var scope = NewDisposeScope();
        var layout = SmoreLayout.Tensors(config, dIn, dOut).ToDictionary(t => t.Suffix);

        Tensor? ReadOptional(string suffix)
        {
            var spec = layout[suffix];
            if (stored(suffix) is not { } t) return null;
            if (!t.shape.SequenceEqual(spec.Shape))
                throw new AdapterValidationException(
                    $"{describe}: tensor '{describe}.{suffix}' has shape [{string.Join(", ", t.shape)}]; expected {spec.Why}", "shape_mismatch");
            return t.to(ScalarType.Float32, device, copy: true);
        }
        Tensor Read(string suffix) => ReadOptional(suffix)
            ?? throw new AdapterValidationException($"{describe}: tensor '{describe}.{suffix}' is missing (S'MoRE needs it: {layout[suffix].Why})", "missing_tensor");

        var levels = new SmoreLevel[config.Levels];
        try
        {
            return Build();
        }
        catch
        {
            foreach (var level in levels) level?.Dispose();
            throw;
        }

        SmoreModule Build()
        {
            int down = config.DownDim(dIn);
            var inputs = new List<Tensor> { Read("moe_downproj_x.weight") };                           // [d_down, d_in]
            var inputBiases = new List<Tensor> { Read("moe_downproj_x.bias") };                         // [d_down]
            int offset = down;
            long labels = 0;
            for (int l = 0; l < config.Levels; l++)
            {
                int s = config.NumExperts[l], r = config.ExpertDims[l];
                int d = config.HiddenDim(l), dNext = config.HiddenDim(l + 1);
                double sc = config.Scaling(l);
                inputs.Add(Read($"moe_A.{l}").reshape(s * r, dIn));                                     // [s·r, d_in]
                inputBiases.Add(Read($"moe_A_bias.{l}").reshape(s * r));                                // [s·r]
                var b = TorchScalars.Mul(Read($"moe_B.{l}").transpose(1, 2), sc);                       // [s, r, d_{l+1}] = sc·Bᵀ
                var bBias = TorchScalars.Mul(Read($"moe_B_bias.{l}"), sc).unsqueeze(1);                 // [s, 1, d_{l+1}]
                var w = l >= 1 ? Read($"moe_W.{l}") : null;                                             // [d_{l+1}, d_l]
                var wBias = l >= 1 ? Read($"moe_W_bias.{l}") : null;                                    // [d_{l+1}]
                var slope = config.ExpertActivation == SmoreActivation.Prelu ? Read($"moe_expert_act_param.{l}") : null; // [1]
                var gateIn = Read($"moe_gate.{l}.mlp.0.weight");                                        // [d_g, gate input]
                var gateInBias = Read($"moe_gate.{l}.mlp.0.bias");                                      // [d_g]
                var gateSlope = config.GateActivation == SmoreActivation.Prelu ? Read($"moe_gate.{l}.mlp.1.weight") : null; // [1]
                var gateOut = Read($"moe_gate.{l}.mlp.2.weight");                                       // [d_g, d_g]
                var gateOutBias = Read($"moe_gate.{l}.mlp.2.bias");                                     // [d_g]
                var keys = Read($"moe_gate.{l}.keys");                                                  // [s, d_g]
                if (config.GateType == SmoreGateType.NoisyTopK)
                {
                    _ = ReadOptional($"moe_gate.{l}.weight_noise.weight");                              // shape-checked, unused at inference
                    keys = nn.functional.normalize(keys, 2.0, -1, 1e-12);                               // [s, d_g], rows of norm 1
                }
                var allIds = config.GateType == SmoreGateType.Dense ? tensor(Enumerable.Range(0, s).Select(i => (long)i).ToArray(), device: device) : null; // [s]
                levels[l] = new SmoreLevel(s, r, config.FanOut(l), d, dNext, config.GateDims[l], offset, Keep(tensor(Enumerable.Range(0, s).Select(e => labels + e).ToArray(), device: device))!,
                    Keep(b)!, Keep(bBias)!, Keep(w), Keep(wBias), Keep(slope),
                    Keep(gateIn)!, Keep(gateInBias)!, Keep(gateSlope), Keep(gateOut)!, Keep(gateOutBias)!, Keep(keys)!, Keep(allIds));
                offset += s * r;
                labels += s;
            }
            var input = cat(inputs.ToArray(), 0);                                                       // [d_down + Σ s·r, d_in]
            var inputBias = cat(inputBiases.ToArray(), 0);                                              // [d_down + Σ s·r]
            var finalW = Read("moe_W_final");                                                           // [d_out, d_L]
            var finalB = Read("moe_W_final_bias");                                                      // [d_out]
            return new SmoreModule(layer, projection, config, down, Keep(input)!, Keep(inputBias)!, levels, Keep(finalW)!, Keep(finalB)!);
        }

        static Tensor? Keep(Tensor? t) => t?.contiguous().DetachFromDisposeScope();
    }

    /// <summary>A copy of this module on <paramref name="device"/>.</summary>
    public SmoreModule To(Device device)
    {
        using var inferenceOff = inference_mode(false);
        static Tensor Copy(Tensor t, Device device) => t.to(t.dtype, device, copy: true).DetachFromDisposeScope();
        return new SmoreModule(Layer, Projection, Config, DownDim, Copy(Input, device), Copy(InputBias, device), Levels.Select(l => l.To(device)).ToArray(),
            Copy(FinalW, device), Copy(FinalB, device));
    }

    public void Dispose()
    {
        Input.Dispose(); InputBias.Dispose(); FinalW.Dispose(); FinalB.Dispose();
        foreach (var l in Levels) l.Dispose();
    }
}
