using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterMath;
using AdapterServe.Tests.Infrastructure;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// Several LoRA-Mixers in one step share one fixed sequence of batched calls per projection (the mixer slots), and
/// every row still gets exactly its own mixer's per-token mixture: compared with a naive loop over tokens and experts
/// (explicit softmax, top-K, renormalisation) that reads the mixer files, and the expert counters with the naive
/// selections; also after a slot has passed to another mixer.
/// </summary>
public class MixerSlotTests
{
    static readonly ModelConfig Base = TinyModels.Llama;
    static readonly Projection[] Attention = [Projection.Q, Projection.V], Mlp = [Projection.Up, Projection.Down];

    sealed record Mixer(LoadedAdapter Loaded, MixtureServingTests.TokenMixture Naive);

    /// <summary>Mixers that differ in experts, top-K, rank, routed projections, router bias, renormalisation and expert biases.</summary>
    static Mixer[] Mixers(TempDir tmp, string id)
    {
        var specs = new (int Experts, int TopK, int Rank, Projection[] Targets, bool RouterBias, bool Renormalize, bool ExpertBias)[]
        {
            (5, 3, 4, [.. Attention, Projection.Up], true, true, false),
            (3, 1, 2, [Projection.Q, Projection.Down], false, false, false),
            (6, 2, 4, [Projection.V, .. Mlp], true, true, true),
            (4, 2, 3, [.. Attention, .. Mlp], true, false, false),
        };
        return specs.Select((s, i) =>
        {
            string dir = tmp.Sub($"m{i}");
            MixtureWriters.WriteLoraMixer(dir, Base, s.Experts, s.TopK, s.Rank, s.Targets, seed: 40 + i, routerBias: s.RouterBias, renormalize: s.Renormalize, expertBias: s.ExpertBias);
            var record = new AdapterRecord($"slot-m{i}-{id}", 1, dir, AdapterValidator.Validate(dir, Base), "sha256:test", "test", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);
            return new Mixer(LoadedAdapter.Load(record, new FuncBaseWeights((_, p) => zeros([Base.ProjectionShape(p).Out, Base.ProjectionShape(p).In])), CPU, ScalarType.Float32),
                MixtureServingTests.NaiveMixer(dir));
        }).ToArray();
    }

    [Theory]
    [InlineData(false)]   // one token per group (decode)
    [InlineData(true)]    // up to three tokens per group, with padding rows and a group on rows that are not contiguous
    public void Mixers_in_one_step_share_the_slot_stacks_and_give_every_row_its_own_mixture_and_counts(bool longer)
    {
        using var tmp = new TempDir();
        var mixers = Mixers(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(8);
        foreach (var i in new[] { 2, 0, 3, 1 }) slots.Assign(mixers[i].Loaded);       // slots not in group order: the stacks are index_selected
        try
        {
            // m0 | base | m1·0.5 | m2 | m3·1.5 ; with `longer`, m0 and m2 get more rows and m0 a second, non-contiguous sequence.
            AssertStep(mixers, slots, [(0, longer ? 2 : 1, 1f), (null, 1, 1f), (1, 1, 0.5f), (2, longer ? 3 : 1, 1f), (3, 1, 1.5f), .. longer ? [((int?)0, 1, 1f)] : Array.Empty<(int?, int, float)>()]);
        }
        finally
        {
            foreach (var m in mixers) m.Loaded.Dispose();
        }
    }

    [Fact]
    public void A_slot_reused_by_another_mixer_serves_the_new_one()
    {
        using var tmp = new TempDir();
        var mixers = Mixers(tmp, Guid.NewGuid().ToString("N")[..8]);
        using var slots = new AdapterSlotTable(2);
        try
        {
            slots.Assign(mixers[0].Loaded);
            slots.Assign(mixers[2].Loaded);
            AssertStep(mixers, slots, [(0, 1, 1f), (2, 1, 1f)], salt: 1);
            // m0 leaves the device tier; m1 (fewer experts, other projections, no router bias) takes its slot, then m3 m2's.
            slots.Free(mixers[0].Loaded);
            slots.Assign(mixers[1].Loaded);
            AssertStep(mixers, slots, [(1, 1, 1f), (2, 1, 2f), (1, 1, 0.5f)], salt: 2);   // m1 at two scales: two groups on one slot
            slots.Free(mixers[2].Loaded);
            slots.Assign(mixers[3].Loaded);
            AssertStep(mixers, slots, [(3, 3, 1f), (1, 2, 1f)], salt: 3);
        }
        finally
        {
            foreach (var m in mixers) m.Loaded.Dispose();
        }
    }

    /// <summary>
    /// One step over <paramref name="plan"/> (per segment: mixer index or null for the base, tokens, scale): every row
    /// against the naive mixture of its mixer, and the expert counters against the naive selections.
    /// </summary>
    static void AssertStep(Mixer[] mixers, AdapterSlotTable slots, (int? Mixer, int Tokens, float Scale)[] plan, int salt = 0)
    {
        var bank = MixerSlotBank.Of(slots);
        int groups = plan.Where(p => p.Mixer is not null).Select(p => (p.Mixer, p.Scale)).Distinct().Count();   // every mixer group from the stacks
        SlotStepCheck.Run(Base, [.. mixers.Select(m => m.Loaded)], (m, layer, p, x) => mixers[m].Naive(ProjectionNames.ModulePath(layer, p), x),
            plan, () => bank.GroupsServed, groups, ProjectionNames.All, salt);
    }
}
