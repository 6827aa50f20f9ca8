using AdapterServe.Adapters;
using AdapterServe.Bench.Reporting;
using AdapterServe.Modeling;

namespace AdapterServe.Bench.Adapters;

/// <summary>Writes one adapter directory with random weights for <paramref name="adapterCase"/> onto <paramref name="model"/>.</summary>
public delegate void AdapterDirectoryWriter(string directory, ModelConfig model, AdapterCase adapterCase, int seed);

/// <summary>
/// One line of the <c>adapters</c> scenario: an adapter kind and shape, how many distinct adapters are spread over
/// the batch, and how its directories are written. A new kind (Kronecker, mixture) is one more line in <see cref="AdapterCases.Table"/>.
/// </summary>
/// <param name="Distinct">1: the same adapter on every sequence; N: sequence i uses adapter i mod N.</param>
/// <param name="ComparedTo">For N distinct adapters: the single-adapter case the N-adapters/1-adapter ratio divides by.</param>
/// <param name="Target">Issue 5's goal for this case's ratio (to the base, or to <paramref name="ComparedTo"/>), at <paramref name="TargetBatches"/>.</param>
public sealed record AdapterCase(
    string Name,
    AdapterKind Kind,
    int Rank,
    IReadOnlyList<Projection> Targets,
    int Distinct,
    AdapterDirectoryWriter Write,
    string? ComparedTo = null,
    Target? Target = null,
    IReadOnlyList<int>? TargetBatches = null)
{
    /// <summary>Name (and cache folder) of the i-th distinct adapter; cases with the same kind, rank and targets share them.</summary>
    public string AdapterName(int index) => Kind == AdapterKind.LoraMixer || Kind == AdapterKind.Omoe
        ? $"{(Distinct > 1 && ComparedTo is { } single ? single : Name)}-{index}" :   // mixtures: the (single) case name carries E and K
        $"{Kind.ToString().ToLowerInvariant()}-r{Rank}-{(Targets.Count == ProjectionNames.All.Length ? "all" : string.Join("+", Targets.Select(t => t.ShortName().Replace("_proj", ""))))}-{index}";
}

public static class AdapterCases
{
    private static readonly Projection[] All = ProjectionNames.All;
    private static readonly Projection[] Mlp = [Projection.Gate, Projection.Up, Projection.Down];

    public static readonly IReadOnlyList<AdapterCase> Table =
    [
        new("lora-r8", AdapterKind.Lora, 8, All, 1, PeftLoraWriter.Write),
        new("lora-r16", AdapterKind.Lora, 16, All, 1, PeftLoraWriter.Write, Target: new Target(AtLeast: 0.93), TargetBatches: [1, 16]),
        new("lora-r64", AdapterKind.Lora, 64, All, 1, PeftLoraWriter.Write),
        new("lora-r16-x4", AdapterKind.Lora, 16, All, 4, PeftLoraWriter.Write, ComparedTo: "lora-r16"),
        new("lora-r16-x16", AdapterKind.Lora, 16, All, 16, PeftLoraWriter.Write, ComparedTo: "lora-r16", Target: new Target(AtLeast: 0.85), TargetBatches: [32]),
        new("lora-r16-x32", AdapterKind.Lora, 16, All, 32, PeftLoraWriter.Write, ComparedTo: "lora-r16"),
        // Issue 9: time per token at most 1.1x one r16 LoRA on the same projections, i.e. throughput >= 1/1.1 of it.
        new("lokr-r16", AdapterKind.Lokr, 16, All, 1, PeftLokrWriter.Write, ComparedTo: "lora-r16", Target: new Target(AtLeast: 1 / 1.1), TargetBatches: [1, 16]),
        new("moka-4", AdapterKind.Moka, 4, All, 1, MokaWriter.Write, ComparedTo: "lora-r16", Target: new Target(AtLeast: 1 / 1.1), TargetBatches: [1, 16]),
        // Issue 13: the Kronecker kinds fit the slot budget too: 16 distinct LoKr adapters at b32 >= 0.85x one.
        new("lokr-r16-x16", AdapterKind.Lokr, 16, All, 16, PeftLokrWriter.Write, ComparedTo: "lokr-r16", Target: new Target(AtLeast: 0.85), TargetBatches: [32]),
        // Mixtures (issue 10): 6 embedded r16 LoRA experts, top-3 per token; 4 r16 OMoE experts, dense. Ratio to one r16 LoRA: at most 1.3x its time per token.
        new("mixer-top3-of-6", AdapterKind.LoraMixer, 16, All, 1,
            (dir, model, c, seed) => MixtureWriters.WriteLoraMixer(dir, model, experts: 6, topK: 3, c.Rank, c.Targets, seed), ComparedTo: "lora-r16", Target: new Target(AtLeast: 1 / 1.3), TargetBatches: [1, 16]),
        // Issue 10: 16 concurrent requests over 4 different mixers >= 0.85x the same load on one mixer.
        new("mixer-top3-of-6-x4", AdapterKind.LoraMixer, 16, All, 4,
            (dir, model, c, seed) => MixtureWriters.WriteLoraMixer(dir, model, experts: 6, topK: 3, c.Rank, c.Targets, seed), ComparedTo: "mixer-top3-of-6", Target: new Target(AtLeast: 0.85), TargetBatches: [16]),
        new("omoe-4", AdapterKind.Omoe, 16, All, 1,
            (dir, model, c, seed) => MixtureWriters.WriteOmoe(dir, model, experts: 4, c.Rank, c.Targets, seed), ComparedTo: "lora-r16", Target: new Target(AtLeast: 1 / 1.3), TargetBatches: [1, 16]),
        // Issue 13: several OMoE adapters of one configuration in a step share the OMoE slot stacks (no target of its own).
        new("omoe-4-x4", AdapterKind.Omoe, 16, All, 4,
            (dir, model, c, seed) => MixtureWriters.WriteOmoe(dir, model, experts: 4, c.Rank, c.Targets, seed), ComparedTo: "omoe-4"),
        // S'MoRE acts on the MLP projections: compared with one r16 LoRA on the same three (issue 10: ≤ 1.15× its time per token).
        new("lora-r16-mlp", AdapterKind.Lora, 16, Mlp, 1, PeftLoraWriter.Write),
        new("smore-2x4", AdapterKind.Smore, 4, Mlp, 1, SmoreWriter.Write, ComparedTo: "lora-r16-mlp", Target: new Target(AtLeast: 1 / 1.15), TargetBatches: [1, 16]),
        // Issue 13: four S'MoRE adapters of one structure in a step share the S'MoRE slot stacks (no target of its own).
        new("smore-2x4-x4", AdapterKind.Smore, 4, Mlp, 4, SmoreWriter.Write, ComparedTo: "smore-2x4"),
    ];

    /// <summary>The table, or the named subset of it (<c>--cases</c>).</summary>
    public static IReadOnlyList<AdapterCase> Select(IReadOnlyList<string>? names)
    {
        if (names is null) return Table;
        foreach (var n in names)
            if (!Table.Any(c => c.Name == n)) throw new UsageException($"--cases: unknown case '{n}' (known: {string.Join(", ", Table.Select(c => c.Name))})");
        return Table.Where(c => names.Contains(c.Name)).ToList();
    }
}
