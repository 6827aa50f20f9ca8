using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// The tokens of one forward step that one (adapter, scale) applies to: the rows of the step's <c>[N, d]</c> tensors
/// that the adapter's kind reads and writes. Built by the step hook on the engine thread; owns a small index tensor
/// when the rows are not one contiguous range.
/// </summary>
public sealed class AdapterTokenGroup : IDisposable
{
    private readonly Tensor? _index; // [n_g] int64 token rows, null when they are one contiguous range

    internal AdapterTokenGroup(LoadedAdapter adapter, float scale, List<int> tokens)
    {
        Adapter = adapter;
        Scale = scale;
        tokens.Sort();
        Tokens = tokens;
        Start = tokens.Count == 0 ? 0 : tokens[0];
        Count = tokens.Count;
        IsContiguous = tokens.Count == 0 || tokens[^1] - tokens[0] + 1 == tokens.Count;
        if (!IsContiguous)
        {
            using var inferenceOff = inference_mode(false);
            _index = tensor(tokens.Select(t => (long)t).ToArray(), ScalarType.Int64, adapter.Device).DetachFromDisposeScope();
        }
    }

    public LoadedAdapter Adapter { get; }
    /// <summary>The request's scale for this adapter (duplicates within a sequence already summed).</summary>
    public float Scale { get; }
    /// <summary>The step's token rows, ascending.</summary>
    public IReadOnlyList<int> Tokens { get; }
    /// <summary>First row.</summary>
    public long Start { get; }
    /// <summary>Number of rows.</summary>
    public long Count { get; }
    /// <summary>True when the rows are <c>[Start, Start + Count)</c> (a narrow, no gather).</summary>
    public bool IsContiguous { get; }

    /// <summary>This group's rows of <paramref name="t"/> <c>[N, d]</c> → <c>[n_g, d]</c> (<paramref name="t"/> itself when they are all of its rows).</summary>
    public Tensor Rows(Tensor t) => _index is null ? RowsView(t) : t.index_select(0, _index);

    /// <summary>This group's contiguous rows of <paramref name="t"/> as a view (writes reach <paramref name="t"/>); only when <see cref="IsContiguous"/>.</summary>
    public Tensor RowsView(Tensor t)
    {
        if (_index is not null) throw new InvalidOperationException("the group's rows are not contiguous");
        return Start == 0 && Count == t.size(0) ? t : t.narrow(0, Start, Count);
    }

    /// <summary><c>y[rows] += delta</c>.</summary>
    public void AddRows(Tensor y, Tensor delta)
    {
        if (_index is null) TorchScalars.AddInPlace(y.narrow(0, Start, Count), delta);
        else TorchScalars.IndexAddInPlace(y, 0, _index, delta);
    }

    /// <summary><c>y[rows] += Scale · delta</c>: <paramref name="delta"/> <c>[n_g, d_out]</c> is scaled in place and cast to y's dtype.</summary>
    public void AddScaledRows(Tensor y, Tensor delta)
    {
        if (Scale != 1f) delta = TorchScalars.MulInPlace(delta, Scale);
        AddRows(y, delta.dtype == y.dtype ? delta : delta.to(y.dtype));
    }

    /// <summary>Throws when <paramref name="owner"/>'s weights at this projection, <c>[d_out, d_in]</c>, do not fit the step's <c>x [N, d_in]</c> and <c>y [N, d_out]</c>.</summary>
    /// <param name="owner">What holds the weights, for the message: an adapter, or a kind's slot stacks.</param>
    public static void EnsureFits(object owner, int layer, Projection projection, long outFeatures, long inFeatures, Tensor x, Tensor y)
    {
        if (inFeatures != x.size(1) || outFeatures != y.size(1))
            throw new InvalidOperationException(
                $"{owner} has {projection.ShortName()} of layer {layer} as [{outFeatures}, {inFeatures}], the step has [{y.size(1)}, {x.size(1)}]");
    }

    /// <summary><c>y[rows] = values</c>.</summary>
    public void SetRows(Tensor y, Tensor values)
    {
        if (_index is null) y.narrow(0, Start, Count).copy_(values);
        else y.index_copy_(0, _index, values);
    }

    public void Dispose() => _index?.Dispose();
}
