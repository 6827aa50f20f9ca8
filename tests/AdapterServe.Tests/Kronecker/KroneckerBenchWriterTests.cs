using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Kronecker;
using AdapterServe.Bench.Adapters;
using AdapterServe.Bench.Models;
using AdapterServe.Modeling;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Kronecker;

/// <summary>The bench's synthetic LoKr and MoKA writers produce folders the server accepts, with PEFT's factor layout.</summary>
public class KroneckerBenchWriterTests
{
    [Fact]
    public void Lokr_writer_gives_135m_layers_the_factors_peft_creates_for_r16()
    {
        using var dir = new TempDir();
        var model = ModelSizes.Smol135M with { NumHiddenLayers = 1 };
        PeftLokrWriter.Write(dir.Path, model, rank: 16, ProjectionNames.All, seed: 3);

        var (description, modules) = KroneckerTestFiles.Load(dir.Path, model);
        foreach (var m in modules.Values) m.Dispose();
        var byProjection = description.Modules.ToDictionary(m => m.Projection);
        Assert.Equal(7, byProjection.Count);
        // 576 = 24·24, 1536 = 32·48, 192 = 12·16 (PEFT's factorization); w2 is low-rank where 16 < max(out_k, in_n) / 2.
        Assert.Equal((new KroneckerShape(24, 24, 24, 24), (int?)null), (byProjection[Projection.Q].Components[0], byProjection[Projection.Q].W2Rank));
        Assert.Equal((new KroneckerShape(12, 24, 16, 24), (int?)null), (byProjection[Projection.K].Components[0], byProjection[Projection.K].W2Rank));
        Assert.Equal((new KroneckerShape(32, 24, 48, 24), (int?)16), (byProjection[Projection.Gate].Components[0], byProjection[Projection.Gate].W2Rank));
        Assert.Equal((new KroneckerShape(24, 32, 24, 48), (int?)16), (byProjection[Projection.Down].Components[0], byProjection[Projection.Down].W2Rank));
        Assert.All(description.Modules, m => Assert.Null(m.W1Rank));
        Assert.All(description.Modules, m => Assert.Equal(1.0, m.Scaling));
    }

    [Fact]
    public void Moka_writer_gives_every_module_its_components_and_a_gate()
    {
        using var dir = new TempDir();
        var model = ModelSizes.Stories260K;
        MokaWriter.Write(dir.Path, model, components: 4, [Projection.Q, Projection.K, Projection.Up, Projection.Down], seed: 4);

        var (description, modules) = KroneckerTestFiles.Load(dir.Path, model);
        Assert.Equal(AdapterKind.Moka, description.Kind);
        Assert.Equal(model.NumHiddenLayers * 4, description.Modules.Count);
        // Small factors near 4: 64 = 4·16, 32 = 4·8, 172 = 4·43; A [f_out, D_in/f_in], B [D_out/f_out, f_in]. Four equal
        // components are one stacked term, costing 4·4·(d_in + d_out) per token like a rank-16 LoRA.
        Assert.Equal([new KroneckerShape(4, 16, 43, 4)], description.Modules.First(m => m.Projection == Projection.Up).Components.Distinct());
        Assert.Equal([new KroneckerShape(4, 16, 8, 4)], description.Modules.First(m => m.Projection == Projection.K).Components.Distinct());
        Assert.All(modules.Values, w => Assert.True(w.Terms.Single().LeftFirst));
        Assert.All(modules.Values, w => Assert.Equal(4, w.Terms.Single().Count));
        foreach (var m in modules.Values) m.Dispose();
    }
}
