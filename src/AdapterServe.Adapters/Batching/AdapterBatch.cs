using AdapterServe.Engine;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// The tokens <c>[TokenStart, TokenStart + TokenCount)</c> of one forward step that belong to one sequence, and the
/// adapters that sequence uses with their scales. No adapter: the base model. Several: a linear merge
/// <c>Σ scale_i · ΔW_i</c> (adapters whose kind forbids mixing, such as DoRA, are only allowed alone).
/// </summary>
public sealed record AdapterSegment(int TokenStart, int TokenCount, IReadOnlyList<(LoadedAdapter Adapter, float Scale)> Adapters)
{
    public static AdapterSegment Base(int tokenStart, int tokenCount) => new(tokenStart, tokenCount, []);

    public static AdapterSegment Single(int tokenStart, int tokenCount, LoadedAdapter adapter, float scale = 1f) =>
        new(tokenStart, tokenCount, [(adapter, scale)]);
}

/// <summary>
/// The projection hook for ONE forward step (SGMV-style, methods.md §5): the step's tokens are grouped by distinct
/// (adapter, scale), the groups by kind, and each kind's <see cref="IAdapterStepExecutor"/> gets all its groups at once,
/// one call per adapted projection. Every kind adds its contribution in place into the base output, which is a fresh
/// tensor of the step; never one GEMM per token, never a merge into W0. Build it on the engine thread, use it for one
/// step, then <see cref="Complete"/> it (it owns small index tensors).
/// </summary>
public sealed class AdapterBatch : IAdapterStepHook, IDisposable
{
    private readonly AdapterTokenGroup[] _groups;
    private readonly IAdapterStepExecutor[] _executors;
    private readonly bool _onCpu;
    private bool _completed;

    /// <exception cref="AdapterValidationException">An adapter that may not be mixed (DoRA) is mixed with other adapters in one sequence.</exception>
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

        _onCpu = order.Count > 0 && order[0].Item1.Device.type == TorchSharp.DeviceType.CPU;
        _groups = new AdapterTokenGroup[order.Count];
        var executors = new List<IAdapterStepExecutor>();
        try
        {
            for (int i = 0; i < order.Count; i++)
                _groups[i] = new AdapterTokenGroup(order[i].Item1, order[i].Item2, byAdapter[order[i]]);
            foreach (var kind in _groups.GroupBy(g => g.Adapter.Handler))     // kinds in order of first appearance
                executors.Add(kind.Key.CreateStepExecutor(kind.ToList()));
        }
        catch
        {
            foreach (var e in executors) e.Abandon();
            foreach (var g in _groups) g?.Dispose();
            throw;
        }
        _executors = [.. executors];
    }

    /// <summary>Tokens the step must have at least (the end of the last segment).</summary>
    public int TokenCount { get; }

    /// <summary>False when every token runs on the base: <see cref="Apply"/> then returns the base output as is.</summary>
    public bool HasAdapters => _groups.Length > 0;

    /// <summary>Distinct (adapter, scale) groups of the step: the number of GEMM pairs per adapted projection.</summary>
    public int GroupCount => _groups.Length;

    public Tensor Apply(int layer, Projection projection, Tensor x, Tensor baseOutput, Tensor baseWeight)
    {
        if (!Targeted(layer, [projection], x)) return baseOutput;
        // Adapter products are small (an inner or outer size of r): on the CPU they run on one thread (CpuOpThreads).
        using var oneThread = x.size(0) <= MaxOneThreadTokens && _onCpu ? CpuOpThreads.OneThread() : default;
        using var scope = NewDisposeScope();
        var y = baseOutput;                                                          // [N, d_out], a fresh tensor of this step: updated in place
        foreach (var executor in _executors) executor.Apply(layer, projection, x, y, baseWeight);
        return y;
    }

    /// <summary>Sibling projections of one input (q|k|v, gate|up): every kind gets them together (<see cref="IAdapterStepExecutor.ApplySiblings"/>), each block updated in place.</summary>
    public void ApplySiblings(int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> baseOutputs, IReadOnlyList<Tensor> baseWeights)
    {
        if (!Targeted(layer, projections, x)) return;
        using var oneThread = x.size(0) <= MaxOneThreadTokens && _onCpu ? CpuOpThreads.OneThread() : default;
        using var scope = NewDisposeScope();
        foreach (var executor in _executors) executor.ApplySiblings(layer, projections, x, baseOutputs, baseWeights);
    }

    /// <summary>Whether an adapter of the step adapts one of <paramref name="projections"/> of <paramref name="layer"/>; throws when x has fewer tokens than the segments cover.</summary>
    private bool Targeted(int layer, IReadOnlyList<Projection> projections, Tensor x)
    {
        bool targeted = false;
        foreach (var g in _groups)
            foreach (var projection in projections) targeted |= g.Adapter.Modules.Targets(layer, projection);
        if (!targeted) return false;
        long n = x.size(0);
        if (n < TokenCount)
            throw new ArgumentException($"the step has {n} tokens but its adapter segments cover {TokenCount}", nameof(x));
        return true;
    }

    /// <summary>
    /// Steps of at most this many tokens compute their adapter contributions on one thread (GEMMs and libtorch's loops,
    /// <see cref="CpuOpThreads"/>): for an r16 LoRA on the 2-core bench machine one thread wins up to about 128 tokens.
    /// </summary>
    internal const int MaxOneThreadTokens = 64;

    /// <summary>The step is over: every kind's end-of-step work, then the step's index tensors are freed. Idempotent.</summary>
    public void Complete()
    {
        if (_completed) return;
        _completed = true;
        try
        {
            foreach (var executor in _executors) executor.Complete();
        }
        finally
        {
            foreach (var g in _groups) g.Dispose();
        }
    }

    /// <summary>The forward pass threw: the step's index tensors are freed and no kind's end-of-step work runs (the step is retried or split). Idempotent.</summary>
    public void Abandon()
    {
        if (_completed) return;
        _completed = true;
        try
        {
            foreach (var executor in _executors) executor.Abandon();
        }
        finally
        {
            foreach (var g in _groups) g.Dispose();
        }
    }

    public void Dispose() => Abandon();

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
        if (merged.Count > 1 && merged.FirstOrDefault(m => m.Adapter.NotMixable is not null).Adapter is { } alone)
            throw new AdapterValidationException(
                $"{alone} is {alone.NotMixable} and cannot be mixed with other adapters " +
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
}
