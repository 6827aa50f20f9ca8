using AdapterServe.Adapters.Kinds.Smore;
using AdapterServe.Bench.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;

namespace AdapterServe.Tests.Smore;

public sealed class SmoreBenchWriterTests
{
    [Fact]
    public void The_bench_writer_writes_an_smore_2x4_directory_the_validator_accepts()
    {
        var model = TestAdapter.TinyBase;
        using var tmp = new TempDir();
        string dir = tmp.Sub("smore-2x4");
        Projection[] mlp = [Projection.Gate, Projection.Up, Projection.Down];
        SmoreWriter.Write(dir, model, SmoreWriter.TwoByFour, mlp, seed: 3);

        var description = SmoreValidator.Validate(dir, model);
        Assert.Equal(model.NumHiddenLayers * mlp.Length, description.Modules.Count);
        Assert.Equal([4, 4], description.Config.NumExperts);
        Assert.Equal([2, 2], description.Config.NumActive);
        Assert.Equal(32, SmoreSignature.Of(description.Config, model.HiddenSize, model.IntermediateSize).HiddenDim(2));
        Assert.Equal(SmoreGateType.NoisyTopK, description.Config.GateType);
    }
}
