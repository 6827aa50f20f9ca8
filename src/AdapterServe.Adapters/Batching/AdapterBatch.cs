using AdapterServe.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace AdapterServe.Adapters;

/// <summary>
/// The tokens <c>[TokenStart, TokenStart + TokenCount)</c> of one forward step that belong to one sequence, and the
/// adapters that sequence uses with their scales. No adapter: the base model. Several: a linear merge
/// <c>Σ scale_i · ΔW_i</c> (DoRA is only allowed alone).
/// </summary>
public sealed record AdapterSegment(int TokenStart, int TokenCount, IReadOnlyList<(LoadedAdapter Adapter, float Scale)> Adapters)
{
    public static AdapterSegment Base(int tokenStart, int tokenCount) => new(tokenStart, tokenCount, []);

    public static AdapterSegment Single(int tokenStart, int tokenCount, LoadedAdapter adapter, float scale = 1f) =>
        new(tokenStart, tokenCount, [(adapter, scale)]);
}

/// <summary>
/// The mixed-adapter projection hook for ONE forward step (SGMV-style, methods.md §5): the step's tokens are grouped by
/// distinct (adapter, scale); per adapted projection each group costs one gather of its rows (a narrow when they are
/// contiguous) and two small GEMMs <c>(x_g Aᵀ) Bᵀ</c>, scattered back with <c>index_add_</c> into a copy of the base
/// output. Never one GEMM per token, never a merge into W0. DoRA groups (an adapter alone on its sequences) have their
/// rows rescaled: <c>y = (m / ‖W0 + scale·ΔW‖_row) ⊙ (x W0ᵀ + scale·x ΔWᵀ)</c>.
/// Build it on the engine thread, use it for one step, dispose it (it owns small index tensors).
/// </summary>
public sealed class AdapterBatch : IProjectionHook, IDisposable
{
    private readonly TokenGroup[] _groups;

    /// <exception cref="AdapterValidationException">A DoRA adapter mixed with other adapters in one sequence.</exception>
    public AdapterBatch(IReadOnlyList<AdapterSegment> segments)
    {
        ArgumentNullException.ThrowIfNull(segments);
        var byAdapter = new Dictionary<(LoadedAdapter Adapter, float Scale), List<int>>();
        var order = new List<(LoadedAdapter, float)>();
        var covered = new List<(int Start, int End)>();

        foreach (var segment in segments)
        {
            if (segment.TokenStart < 0 || segment.TokenCount < 0)
                throw new ArgumentException($"segment [{segment.TokenStart}, +{segment.TokenCount}) has a negative start or length", nameof(segments));
            int end = segment.TokenStart + segment.TokenCount;
            TokenCount = Math.Max(TokenCount, end);
            covered.Add((segment.TokenStart, end));

            var adapters = MergeDuplicates(segment);
            if (segment.TokenCount == 0) continue;
            foreach (var (adapter, scale) in adapters)
            {
                var key = (adapter, scale);
                if (!byAdapter.TryGetValue(key, out var tokens))
                {
                    byAdapter[key] = tokens = [];
                    order.Add(key);
                }
                for (int t = segment.TokenStart; t < end; t++) tokens.Add(t);
            }
        }
        CheckNoOverlap(covered);

        var devices = order.Select(k => k.Item1.Device.ToString()).Distinct().ToList();
        if (devices.Count > 1)
            throw new ArgumentException($"adapters of one batch must share a device, got {string.Join(", ", devices)}", nameof(segments));

        _groups = new TokenGroup[order.Count];
        try
        {
            for (int i = 0; i < order.Count; i++)
                _groups[i] = new TokenGroup(order[i].Item1, order[i].Item2, byAdapter[order[i]]);
        }
        catch
        {
            foreach (var g in _groups) g?.Dispose();
            throw;
        }
    }

    /// <summary>Tokens the step must have at least (the end of the last segment).</summary>
    public int TokenCount { get; }

    /// <summary>False when every token runs on the base: <see cref="Apply"/> then returns the base output as is.</summary>
    public bool HasAdapters => _groups.Length > 0;

    /// <summary>Distinct (adapter, scale) groups of the step: the number of GEMM pairs per adapted projection.</summary>
    public int GroupCount => _groups.Length;

    public Tensor Apply(int layer, Projection projection, Tensor x, Tensor baseOutput, Tensor baseWeight)
    {
        if (_groups.Length == 0) return baseOutput;
        bool targeted = false;
        foreach (var g in _groups) targeted |= g.Adapter.Module(layer, projection) is not null;
        if (!targeted) return baseOutput;

        if (x.shape[0] < TokenCount)
            throw new ArgumentException($"the step has {x.shape[0]} tokens but its adapter segments cover {TokenCount}", nameof(x));

        // Every TorchSharp call costs tens of microseconds on the CPU and this runs for every adapter group of every
        // projection of every step: keep the calls per group to the minimum (views, two linears, one in-place add).
        using var scope = NewDisposeScope();
        var y = baseOutput;                                                          // [N, d_out], a fresh tensor of this step: updated in place
        foreach (var g in _groups)
        {
            if (g.Adapter.Module(layer, projection) is not { } w) continue;
            if (w.InFeatures != x.shape[1] || w.OutFeatures != baseOutput.shape[1])
                throw new InvalidOperationException(
                    $"{g.Adapter} has {projection.ShortName()} of layer {layer} as [{w.OutFeatures}, {w.InFeatures}], the step has [{baseOutput.shape[1]}, {x.shape[1]}]");

            var xg = g.Rows(x);                                                      // [n_g, d_in]
            if (xg.dtype != w.A.dtype) xg = xg.to(w.A.dtype);
            var delta = linear(linear(xg, w.A), w.B);                                // [n_g, R] → [n_g, d_out]
            if (w.Bias is not null) delta = TorchScalars.Add(delta, w.Bias);         // + s·bias, [d_out] broadcast

            if (w.IsDora)
            {
                // Only reachable for a DoRA adapter alone on its sequences: these rows have no other contribution.
                var rowScale = w.DoraRowScale(g.Scale, baseWeight);                  // [d_out] = m / ‖W0 + scale·ΔW‖_row
                var merged = TorchScalars.Add(g.Rows(baseOutput).to(w.A.dtype), delta, g.Scale); // [n_g, d_out] = x W0ᵀ + scale·x ΔWᵀ
                g.SetRows(y, merged.mul(rowScale).to(y.dtype));                      // [n_g, d_out] rows rescaled
            }
            else
            {
                if (g.Scale != 1f) delta = TorchScalars.MulInPlace(delta, g.Scale);  // [n_g, d_out]
                g.AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
            }
        }
        return y;
    }

    public void Dispose()
    {
        foreach (var g in _groups) g.Dispose();
    }

    private static List<(LoadedAdapter Adapter, float Scale)> MergeDuplicates(AdapterSegment segment)
    {
        var merged = new List<(LoadedAdapter Adapter, float Scale)>();
        foreach (var (adapter, scale) in segment.Adapters)
        {
            ArgumentNullException.ThrowIfNull(adapter);
            ObjectDisposedException.ThrowIf(adapter.IsDisposed, adapter);
            if (!float.IsFinite(scale))
                throw new AdapterValidationException($"{adapter}: scale {scale} is not a finite number", "invalid_adapter_scale");
            int i = merged.FindIndex(m => ReferenceEquals(m.Adapter, adapter));
            if (i >= 0) merged[i] = (adapter, merged[i].Scale + scale);
            else merged.Add((adapter, scale));
        }
        if (merged.Count > 1 && merged.FirstOrDefault(m => m.Adapter.HasDora).Adapter is { } dora)
            throw new AdapterValidationException(
                $"{dora} is a DoRA adapter: DoRA rescales whole weight rows and cannot be mixed with other adapters " +
                $"({string.Join(", ", merged.Select(m => m.Adapter.ToString()))}) in one request", "unsupported_adapter_mix");
        return merged;
    }

    private static void CheckNoOverlap(List<(int Start, int End)> covered)
    {
        var sorted = covered.Where(c => c.End > c.Start).OrderBy(c => c.Start).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].Start < sorted[i - 1].End)
                throw new ArgumentException($"adapter segments [{sorted[i - 1].Start}, {sorted[i - 1].End}) and [{sorted[i].Start}, {sorted[i].End}) overlap", "segments");
    }

    /// <summary>The tokens of the step that one (adapter, scale) applies to.</summary>
    private sealed class TokenGroup : IDisposable
    {
        private readonly long _start;
        private readonly long _count;
        private readonly Tensor? _index; // [n_g] int64 token rows, null when they are one contiguous range

        public TokenGroup(LoadedAdapter adapter, float scale, List<int> tokens)
        {
            Adapter = adapter;
            Scale = scale;
            tokens.Sort();
            _start = tokens.Count == 0 ? 0 : tokens[0];
            _count = tokens.Count;
            bool contiguous = tokens.Count == 0 || tokens[^1] - tokens[0] + 1 == tokens.Count;
            if (!contiguous)
            {
                using var inferenceOff = inference_mode(false);
                _index = tensor(tokens.Select(t => (long)t).ToArray(), ScalarType.Int64, adapter.Device).DetachFromDisposeScope();
            }
        }

        public LoadedAdapter Adapter { get; }
        public float Scale { get; }

        /// <summary>This group's rows of <paramref name="t"/> <c>[N, d]</c> → <c>[n_g, d]</c>.</summary>
        public Tensor Rows(Tensor t) => _index is null ? t.narrow(0, _start, _count) : t.index_select(0, _index);

        /// <summary><c>y[rows] += delta</c>.</summary>
        public void AddRows(Tensor y, Tensor delta)
        {
            if (_index is null) TorchScalars.AddInPlace(y.narrow(0, _start, _count), delta);
            else TorchScalars.IndexAddInPlace(y, 0, _index, delta);
        }

        /// <summary><c>y[rows] = values</c>.</summary>
        public void SetRows(Tensor y, Tensor values)
        {
            if (_index is null) y.narrow(0, _start, _count).copy_(values);
            else y.index_copy_(0, _index, values);
        }

        public void Dispose() => _index?.Dispose();
    }
}
