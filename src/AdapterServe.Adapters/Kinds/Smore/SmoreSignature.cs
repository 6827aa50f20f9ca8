namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>The shape of one sub-layer of an S'MoRE tree: s_l experts of rank r_l, f_l children per parent path, router width d_g.</summary>
/// <param name="FanOut">f_l, or s_l for the dense gate (num_active is not used there).</param>
public readonly record struct SmoreLevelShape(int Experts, int Rank, int FanOut, int GateDim);

/// <summary>
/// The structure of one S'MoRE module: every field that shapes one of its tensors or selects a code path of the tree
/// (<see cref="SmoreTree"/>). Modules with equal signatures differ only in values (weights, PReLU slopes, the scalings
/// folded into B), so their tensors stack along a leading dimension and one tree evaluates them together (the S'MoRE
/// slots). <c>lora_alpha</c> is not part of it (folded at load), nor what the adapter targets.
/// </summary>
/// <param name="DownDim">d_down, resolved against d_in (<see cref="SmoreConfig.DownDim"/>).</param>
/// <param name="Levels">Per sub-layer, 0 = leaf.</param>
public sealed record SmoreSignature(int InFeatures, int OutFeatures, int DownDim, SmoreGateType GateType,
    SmoreActivation GateActivation, SmoreActivation ExpertActivation, SmoreActivationPosition Position, IReadOnlyList<SmoreLevelShape> Levels)
{
    /// <summary>The signature of a module of <paramref name="config"/> on a projection <c>[d_out, d_in]</c>.</summary>
    public static SmoreSignature Of(SmoreConfig config, int dIn, int dOut) => new(dIn, dOut, config.DownDim(dIn), config.GateType,
        config.GateActivation, config.ExpertActivation, config.ActivationPosition,
        [.. Enumerable.Range(0, config.Levels).Select(l => new SmoreLevelShape(config.NumExperts[l], config.ExpertDims[l], config.FanOut(l), config.GateDims[l]))]);

    /// <summary>d_l: d_0 = 0, d_{l+1} = d_l + s_l·r_l (l = 0..L).</summary>
    public int HiddenDim(int level) => Levels.Take(level).Sum(s => s.Experts * s.Rank);

    /// <summary>Where sub-layer l's experts start in the stacked input projection: d_down + Σ_{l' &lt; l} s_{l'}·r_{l'}.</summary>
    public int InputOffset(int level) => DownDim + HiddenDim(level);

    /// <summary>Columns of the stacked input projection: d_down + Σ s_l·r_l.</summary>
    public int InputWidth => InputOffset(Levels.Count);

    /// <summary>Input width of sub-layer l's router: d_down plus the keys of its selected ancestors.</summary>
    public int GateInputDim(int level) => DownDim + Levels.Skip(level + 1).Sum(s => s.GateDim);

    /// <summary>Σ s_l: the accounting's labels of one module.</summary>
    public int Experts => Levels.Sum(s => s.Experts);

    /// <summary>Routed paths per token that reach sub-layer l: Π_{l' ≥ l} f_{l'}.</summary>
    public int PathsAt(int level) => Levels.Skip(level).Aggregate(1, (p, s) => p * s.FanOut);

    /// <summary>Σ_l P_l: the selections one token makes over all sub-layers (the width of the labelled ids).</summary>
    public int Selections => Enumerable.Range(0, Levels.Count).Sum(PathsAt);

    public bool Equals(SmoreSignature? other) => other is not null && InFeatures == other.InFeatures && OutFeatures == other.OutFeatures
        && DownDim == other.DownDim && GateType == other.GateType && GateActivation == other.GateActivation
        && ExpertActivation == other.ExpertActivation && Position == other.Position && Levels.SequenceEqual(other.Levels);

    public override int GetHashCode()
    {
        var hash = new HashCode();
        hash.Add(InFeatures);
        hash.Add(OutFeatures);
        hash.Add(DownDim);
        hash.Add(GateType);
        hash.Add(GateActivation);
        hash.Add(ExpertActivation);
        hash.Add(Position);
        foreach (var level in Levels) hash.Add(level);
        return hash.ToHashCode();
    }

    public override string ToString() =>
        $"[{OutFeatures}, {InFeatures}] d_down {DownDim} {GateType} gate ({GateActivation}) σ {ExpertActivation} at {Position}, levels " +
        string.Join(" ", Levels.Select(s => $"{s.Experts}×r{s.Rank}/f{s.FanOut}/g{s.GateDim}"));
}
