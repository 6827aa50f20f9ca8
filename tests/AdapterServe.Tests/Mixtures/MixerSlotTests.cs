using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterMath;
using AdapterServe.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;
using static AdapterServe.Tests.Mixtures.MixtureNaive;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// Several LoRA-Mixers in one step share one fixed sequence of batched calls per projection (the mixer slots), and
/// every row still gets exactly its own mixer's per-token mixture: compared with a naive loop over tokens and experts
/// (explicit softmax, top-K, renormalisation) that reads the mixer files, and the expert counters with the naive
/// selections.
/// </summary>
public class MixerSlotTests
{
    static readonly ModelConfig Base = TinyModels.Llama;
    static readonly Projection[] Attention = [Projection.Q, Projection.V], Mlp = [Projection.Up, Projection.Down];

    sealed record Mixer(LoadedAdapter Loaded, MixtureServingTests.TokenMixture Naive);

    /// <summary>Mixers that differ in experts, top-K, rank, routed projections, router bias and renormalisation.</summary>
    static Mixer[] Mixers(TempDir tmp, string id)
    {
        var specs = new (int Experts, int TopK, int Rank, Projection[] Targets, bool RouterBias, bool Renormalize)[]
        {
            (5, 3, 4, [.. Attention, Projection.Up], true, true),
            (3, 1, 2, [Projection.Q, Projection.Down], false, false),
            (6, 2, 4, [Projection.V, .. Mlp], true, true),
            (4, 2, 3, [.. Attention, .. Mlp], true, false),
        };
        return specs.Select((s, i) =>
        {
            string dir = tmp.Sub($"m{i}");
            MixtureWriters.WriteLoraMixer(dir, Base, s.Experts, s.TopK, s.Rank, s.Targets, seed: 40 + i, routerBias: s.RouterBias, renormalize: s.Renormalize);
            var record = new AdapterRecord($"slot-m{i}-{id}", 1, dir, AdapterValidator.Validate(dir, Base), "sha256:test", "test", DateTimeOffset.UnixEpoch, DateTimeOffset.UnixEpoch);
            return new Mixer(LoadedAdapter.Load(record, new FuncBaseWeights((_, p) => zeros([Base.ProjectionShape(p).Out, Base.ProjectionShape(p).In])), CPU, ScalarType.Float32),
                MixtureServingTests.NaiveMixer(dir));
        }).ToArray();
    }

    [Theory]
    [InlineData(false)]   // one token per group: the chosen experts are gathered
    [InlineData(true)]    // up to three tokens per group: dense over every expert
    public void Mixers_in_one_step_share_the_slot_stacks_and_give_every_row_its_own_mixture_and_counts(bool dense)
    {
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        var mixers = Mixers(tmp, id);
        using var slots = new AdapterSlotTable(8);
        foreach (var i in new[] { 2, 0, 3, 1 }) slots.Assign(mixers[i].Loaded);       // slots not in group order: gathered stacks
        try
        {
            // Rows: m0 | base | m1·0.5 | m2 ... ; with `dense`, m0 and m2 get more rows (m0's not contiguous).
            var rowMixer = new List<(int Mixer, float Scale)?>();
            var segments = new List<AdapterSegment>();
            void Add(int? mixer, int tokens, float scale = 1f)
            {
                segments.Add(mixer is { } m ? AdapterSegment.Single(rowMixer.Count, tokens, mixers[m].Loaded, scale) : AdapterSegment.Base(rowMixer.Count, tokens));
                for (int t = 0; t < tokens; t++) rowMixer.Add(mixer is { } mm ? (mm, scale) : null);
            }
            Add(0, dense ? 2 : 1);
            Add(null, 1);
            Add(1, 1, 0.5f);
            Add(2, dense ? 3 : 1);
            Add(3, 1, 1.5f);
            if (dense) Add(0, 1);                                                       // m0's second sequence: same group, rows not contiguous
            int rows = rowMixer.Count;

            var bank = MixerSlotBank.Of(slots);
            long servedBefore = bank.GroupsServed;
            var before = mixers.Select(m => ExpertUsage.Shared.Snapshot(m.Loaded.Name)).ToArray();
            var naiveCounts = new Dictionary<(int Mixer, string Module, int Expert), long>();
            using (var batch = new AdapterBatch(segments))
            {
                Assert.Equal(4, bank.GroupsServed - servedBefore);                        // every mixer group from the stacks
                Assert.Equal(dense, (dense ? 3 : 1) * 3 >= bank.Experts);                // L·K_max against E_max decides the form
                for (int layer = 0; layer < Base.NumHiddenLayers; layer++)
                    foreach (var p in ProjectionNames.All)
                    {
                        var (dIn, dOut) = Base.ProjectionShape(p);
                        var x = randn([rows, dIn], generator: new Generator((ulong)(layer * 10 + (int)p + 1)));  // [rows, d_in]
                        var y = batch.Apply(layer, p, x, zeros([rows, dOut]), zeros([dOut, dIn]));   // base output 0: y is the delta
                        string module = ProjectionNames.ModulePath(layer, p);
                        var xs = Host2(x);
                        var got = Host2(y);
                        for (int r = 0; r < rows; r++)
                        {
                            var expected = new double[dOut];
                            if (rowMixer[r] is var (m, scale))
                            {
                                var (delta, selected) = mixers[m].Naive(module, Row(xs, r));
                                if (delta is not null)
                                {
                                    for (int o = 0; o < dOut; o++) expected[o] = scale * delta[o];
                                    foreach (int e in selected) naiveCounts[(m, module, e)] = naiveCounts.GetValueOrDefault((m, module, e)) + 1;
                                }
                            }
                            for (int o = 0; o < dOut; o++)
                                Assert.True(Math.Abs(expected[o] - got[r, o]) < 1e-5, $"layer {layer} {p} row {r} [{o}]: naive {expected[o]}, served {got[r, o]}");
                        }
                    }
                batch.Complete();
            }

            for (int m = 0; m < mixers.Length; m++)
            {
                var after = ExpertUsage.Shared.Snapshot(mixers[m].Loaded.Name)!;
                foreach (var module in after.Modules)
                {
                    var old = before[m]?.Modules.SingleOrDefault(o => o.Layer == module.Layer && o.Module == module.Module);
                    string path = ProjectionNames.ModulePath(module.Layer, ProjectionNames.All.Single(p => p.ShortName() == module.Module));
                    for (int e = 0; e < module.Experts.Count; e++)
                        Assert.True(naiveCounts.GetValueOrDefault((m, path, e)) == module.Experts[e].Selections - (old?.Experts[e].Selections ?? 0),
                            $"m{m} {path} expert {e}: naive {naiveCounts.GetValueOrDefault((m, path, e))}, counted {module.Experts[e].Selections - (old?.Experts[e].Selections ?? 0)}");
                }
                Assert.Equal(naiveCounts.Keys.Where(k => k.Mixer == m).Select(k => k.Module).Distinct().Count(),
                    after.Modules.Count(module => module.Selections - (before[m]?.Modules.SingleOrDefault(o => o.Layer == module.Layer && o.Module == module.Module)?.Selections ?? 0) > 0));
            }
        }
        finally
        {
            foreach (var m in mixers) m.Loaded.Dispose();
        }
    }
}
