using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Adapters.Store;
using AdapterServe.Bench.Adapters;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using AdapterServe.Tests.AdapterServing;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using static AdapterServe.Tests.Mixtures.MixtureNaive;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// Mixtures through the real serving stack (registry, residency cache, binder, step hook, engine) on a tiny model,
/// compared with the naive model whose projections run a per-token mixture loop written here.
/// </summary>
public class MixtureServingTests
{
    static readonly ModelConfig Base = TinyModels.Llama;
    static string ModelDir => TinyModels.Directory(Base);
    static readonly Projection[] Targets = [Projection.Q, Projection.V, Projection.O, Projection.Up, Projection.Down];

    /// <summary>A naive mixture: per module, per token, the delta and the expert ids chosen.</summary>
    internal delegate (double[] Delta, int[] Selected) TokenMixture(string module, double[] x);

    /// <summary>
    /// One PEFT LoRA's delta for one token, read from its files: <c>s·(B(A x) + bias)</c> (PEFT scales its lora_bias like
    /// the delta), or null where it does not adapt <paramref name="module"/>.
    /// </summary>
    internal static double[]? NaiveLoraDelta(string expertDir, string module, double[] x)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(expertDir, "adapter_config.json")))!;
        double s = config["lora_alpha"]!.GetValue<double>() / config["r"]!.GetValue<int>();
        string prefix = "base_model.model." + module;
        using var f = SafetensorsFile.Open(Path.Combine(expertDir, "adapter_model.safetensors"));
        if (!f.Tensors.ContainsKey(prefix + ".lora_A.weight")) return null;
        var delta = MatVec(Host2(f.Read(prefix + ".lora_B.weight", ScalarType.Float64, CPU)), MatVec(Host2(f.Read(prefix + ".lora_A.weight", ScalarType.Float64, CPU)), x));
        if (f.Tensors.ContainsKey(prefix + ".lora_B.bias"))
        {
            var bias = Host1(f.Read(prefix + ".lora_B.bias", ScalarType.Float64, CPU));
            for (int o = 0; o < delta.Length; o++) delta[o] += bias[o];
        }
        return [.. delta.Select(v => s * v)];
    }

    /// <summary>A plain LoRA per token (<see cref="NaiveLoraDelta"/>), no expert ids.</summary>
    internal static TokenMixture NaiveLora(string dir) => (module, x) => (NaiveLoraDelta(dir, module, x)!, []);

    /// <summary>LoRA-Mixer per token: softmax router (+bias), explicit top-K, renormalise, Σ p̃_e s_e B_e A_e x.</summary>
    /// <param name="expertDirectory">Where expert <c>name</c>'s PEFT files are (default: embedded under <c>experts/name</c>).</param>
    internal static TokenMixture NaiveMixer(string dir, Func<string, string>? expertDirectory = null)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        var experts = config["experts"]!.AsArray().Select(e => e!.GetValue<string>()).ToArray();
        int k = config["top_k"]!.GetValue<int>();
        bool renormalize = config["renormalize"]?.GetValue<bool>() ?? true;
        string routers = Path.Combine(dir, "mixer_model.safetensors");
        return (module, x) =>
        {
            string prefix = "base_model.model." + module;
            using var f = SafetensorsFile.Open(routers);
            if (!f.Tensors.ContainsKey(prefix + ".router.weight")) return (null!, []);
            var logits = MatVec(Host2(f.Read(prefix + ".router.weight", ScalarType.Float64, CPU)), x);
            if (f.Tensors.ContainsKey(prefix + ".router.bias"))
            {
                var bias = Host1(f.Read(prefix + ".router.bias", ScalarType.Float64, CPU));
                for (int e = 0; e < logits.Length; e++) logits[e] += bias[e];
            }
            var p = Softmax(logits);
            var top = TopK(p, k);
            var sorted = p.OrderDescending().ToArray();
            // A K-th/(K+1)-th probability gap below float32 resolution is a coin toss for the engine: the fixture's seeds avoid it.
            if (k < p.Length) Assert.True(sorted[k - 1] - sorted[k] > 1e-6, $"{module}: experts tie at the top-K boundary within float32 precision; pick another seed");
            double mass = renormalize ? top.Sum(e => p[e]) : 1.0;
            double[]? y = null;
            foreach (int e in top)
            {
                var delta = NaiveLoraDelta(expertDirectory?.Invoke(experts[e]) ?? Path.Combine(dir, "experts", experts[e]), module, x)!;
                y ??= new double[delta.Length];
                for (int o = 0; o < delta.Length; o++) y[o] += p[e] / mass * delta[o];
            }
            return (y!, top);
        };
    }

    /// <summary>
    /// OMoE per token: expert outputs, softmax gates, with top_k the K most probable experts (in expert order, gates
    /// renormalised over them), Gram–Schmidt in expert order with the ε guard, Σ g_i (‖E_i‖ or 1) q_i.
    /// </summary>
    internal static TokenMixture NaiveOmoe(string dir)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        int n = config["num_experts"]!.GetValue<int>();
        int? topK = config["top_k"]?.GetValue<int>();
        bool rescaleNorm = (config["rescale"]?.GetValue<string>() ?? "norm") == "norm";
        double eps = config["eps"]?.GetValue<double>() ?? 1e-6;
        double s = config["lora_alpha"]!.GetValue<double>() / config["r"]!.GetValue<int>();
        string weights = Path.Combine(dir, "adapter_model.safetensors");
        return (module, x) =>
        {
            string prefix = "base_model.model." + module;
            using var f = SafetensorsFile.Open(weights);
            if (!f.Tensors.ContainsKey(prefix + ".omoe_router.weight")) return (null!, []);
            var g = Softmax(MatVec(Host2(f.Read(prefix + ".omoe_router.weight", ScalarType.Float64, CPU)), x));
            var chosen = Enumerable.Range(0, n).ToArray();
            double mass = 1.0;
            if (topK is { } k)
            {
                var sorted = g.OrderDescending().ToArray();
                // A K-th/(K+1)-th probability gap below float32 resolution is a coin toss for the engine: the fixture's seeds avoid it.
                if (k < n) Assert.True(sorted[k - 1] - sorted[k] > 1e-6, $"{module}: experts tie at the top-K boundary within float32 precision; pick another seed");
                chosen = [.. TopK(g, k).Order()];
                mass = chosen.Sum(i => g[i]);
            }
            var basis = new List<double[]>();
            double[]? y = null;
            foreach (int i in chosen)
            {
                var e = MatVec(Host2(f.Read($"{prefix}.omoe_B.{i}", ScalarType.Float64, CPU)), MatVec(Host2(f.Read($"{prefix}.omoe_A.{i}", ScalarType.Float64, CPU)), x)).Select(v => s * v).ToArray();
                var v = (double[])e.Clone();
                foreach (var q in basis) { double c = Dot(q, v); for (int o = 0; o < v.Length; o++) v[o] -= c * q[o]; }
                double norm = Norm(v);
                var qi = norm < eps ? new double[v.Length] : v.Select(a => a / norm).ToArray();
                basis.Add(qi);
                y ??= new double[v.Length];
                for (int o = 0; o < v.Length; o++) y[o] += g[i] / mass * (rescaleNorm ? Norm(e) : 1.0) * qi[o];
            }
            return (y!, chosen);
        };
    }

    /// <summary>The naive model's projection hook for <paramref name="mixture"/>; counts selections per (module, expert id) into <paramref name="counts"/>.</summary>
    internal static Func<string, Tensor, Tensor, Tensor> Hook(TokenMixture mixture, Dictionary<(string, int), long>? counts = null) => (module, x, y) =>
    {
        var xs = Host2(x);
        var result = Host2(y);
        for (int t = 0; t < xs.GetLength(0); t++)
        {
            var (delta, selected) = mixture(module, Row(xs, t));
            if (delta is null) return y;
            for (int o = 0; o < delta.Length; o++) result[t, o] += delta[o];
            if (counts is not null) foreach (int e in selected) counts[(module, e)] = counts.GetValueOrDefault((module, e)) + 1;
        }
        var flat = new double[result.Length];
        Buffer.BlockCopy(result, 0, flat, 0, flat.Length * sizeof(double));
        return tensor(flat, y.shape, ScalarType.Float64).to(y.dtype);
    };

    static string WriteMixer(TempDir tmp, string name, int seed)
    {
        string dir = tmp.Sub(name);
        MixtureWriters.WriteLoraMixer(dir, Base, experts: 5, topK: 3, rank: 4, Targets, seed);
        return dir;
    }

    static string WriteOmoe(TempDir tmp, string name, int seed)
    {
        string dir = tmp.Sub(name);
        MixtureWriters.WriteOmoe(dir, Base, experts: 4, rank: 4, Targets, seed);
        return dir;
    }

    /// <summary>Publishes a mixer straight into the registry (the store does not place the mixer's extra files yet).</summary>
    static void PublishMixer(AdapterEngineFixture f, string name, string dir)
    {
        var description = AdapterValidator.Validate(dir, Base, new AdapterValidationOptions(Registered: n => f.Store.Registry.TryResolve(n, out var r) ? r : null));
        f.Store.Registry.Publish(new AdapterRecord(name, 1, dir, description, "test", "test", DateTimeOffset.UtcNow, DateTimeOffset.UtcNow));
    }

    static void AssertCountsEqual(string adapter, Dictionary<(string Module, int Expert), long> naive, Func<int, string> label)
    {
        var usage = ExpertUsage.Shared.Snapshot(adapter);
        Assert.NotNull(usage);
        Assert.Equal(naive.Keys.Select(k => k.Module).Distinct().Count(), usage!.Modules.Count);
        foreach (var module in usage.Modules)
        {
            string path = ProjectionNames.ModulePath(module.Layer, ProjectionNames.All.Single(p => p.ShortName() == module.Module));
            foreach (var (expert, index) in module.Experts.Select((e, i) => (e, i)))
            {
                Assert.Equal(label(index), expert.Expert);
                Assert.True(naive.GetValueOrDefault((path, index)) == expert.Selections, $"{adapter} {path} expert {index}: naive {naive.GetValueOrDefault((path, index))}, served {expert.Selections}");
            }
        }
    }

    [Fact]
    public async Task Mixer_and_omoe_greedy_logits_and_expert_counts_equal_a_naive_per_token_model()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string mixer = $"mixer-{id}", omoe = $"omoe-{id}";
        string mixerDir = WriteMixer(tmp, "mixer", seed: 7);
        PublishMixer(f, mixer, mixerDir);
        string omoeDir = WriteOmoe(tmp, "omoe", seed: 6);
        await f.RegisterAsync(omoe, omoeDir);                                      // OMoE is a PEFT two-file layout: through the store
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [5, 6, 7, 8];

        foreach (var (name, mixture, label) in new (string, TokenMixture, Func<int, string>)[]
                 { (mixer, NaiveMixer(mixerDir), i => $"expert-{i}"), (omoe, NaiveOmoe(omoeDir), i => i.ToString()) })
        {
            var req = EngineRunner.Greedy(prompt, 4, logprobs: 0) with { Adapters = [new AdapterRef(name)] };
            var result = (await EngineRunner.RunAsync(f.Engine, req))[0];
            var seq = prompt.ToList();
            foreach (var (token, lp) in result.Tokens.Zip(result.Logprobs))
            {
                var expected = naive.Logits(seq, Hook(mixture))[-1].log_softmax(-1);
                Assert.Equal((int)expected.argmax().item<long>(), token);
                Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
                seq.Add(token);
            }
            // Every position that ran through the model: the prompt and each fed-back token (not the last one).
            var counts = new Dictionary<(string, int), long>();
            naive.Logits(seq[..^1], Hook(mixture, counts));
            Assert.All(ExpertUsage.Shared.Snapshot(name)!.Modules, m => Assert.Equal(seq.Count - 1, m.RoutedTokens));
            AssertCountsEqual(name, counts, label);
            // The mixture really changes the output: the naive logits with and without it differ.
            var with = naive.Logits(prompt, Hook(mixture))[-1].data<double>().ToArray();
            var without = naive.Logits(prompt)[-1].data<double>().ToArray();
            Assert.True(with.Zip(without).Max(p => Math.Abs(p.First - p.Second)) > 1e-3, $"{name} does not change the output");
        }
    }

    [Fact]
    public async Task Batch_mixing_mixers_omoe_a_lora_and_the_base_gives_each_sequence_what_it_gets_alone_and_counts_every_selection()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string m1 = $"m1-{id}", m2 = $"m2-{id}", om = $"om-{id}", lora = $"lora-{id}";
        string m1Dir = WriteMixer(tmp, "m1", seed: 8), m2Dir = WriteMixer(tmp, "m2", seed: 9), omDir = WriteOmoe(tmp, "om", seed: 10);
        PublishMixer(f, m1, m1Dir);
        PublishMixer(f, m2, m2Dir);
        await f.RegisterAsync(om, omDir);
        PeftLoraWriter.Write(tmp.Sub("lora"), Base, 4, ProjectionNames.All, seed: 11);
        await f.RegisterAsync(lora, tmp.Sub("lora"));

        string?[] models = [m1, null, om, lora, m2, m1, om];
        int[][] prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16], [17, 18, 19, 20]];
        GenerationRequest Req(int i) => EngineRunner.Greedy(prompts[i], 5, logprobs: 3) with { Adapters = models[i] is { } m ? [new AdapterRef(m)] : [] };

        var alone = new List<Completion>();
        for (int i = 0; i < models.Length; i++) alone.Add((await EngineRunner.RunAsync(f.Engine, Req(i)))[0]);
        var before = new[] { m1, m2, om }.ToDictionary(n => n, n => ExpertUsage.Shared.Snapshot(n)!);
        var together = await Task.WhenAll(Enumerable.Range(0, models.Length).Select(i => EngineRunner.RunAsync(f.Engine, Req(i))));

        for (int i = 0; i < models.Length; i++)
        {
            Assert.Equal(alone[i].Tokens, together[i][0].Tokens);
            for (int t = 0; t < alone[i].Tokens.Count; t++)
            {
                Assert.Equal(alone[i].Logprobs[t]!.Logprob, together[i][0].Logprobs[t]!.Logprob, 1e-5);
                Assert.Equal(alone[i].Logprobs[t]!.Top.Select(x => x.TokenId), together[i][0].Logprobs[t]!.Top.Select(x => x.TokenId));
            }
        }

        // The concurrent batch added exactly the naive selections of its sequences (prompt + fed-back tokens).
        using var naive = new NaiveLlama(ModelDir);
        foreach (var (name, mixture) in new[] { (m1, NaiveMixer(m1Dir)), (m2, NaiveMixer(m2Dir)), (om, NaiveOmoe(omDir)) })
        {
            var counts = new Dictionary<(string, int), long>();
            for (int i = 0; i < models.Length; i++)
                if (models[i] == name) naive.Logits([.. prompts[i], .. together[i][0].Tokens.SkipLast(1)], Hook(mixture, counts));
            var after = ExpertUsage.Shared.Snapshot(name)!;
            foreach (var (module, old) in after.Modules.Zip(before[name].Modules))
            {
                string path = ProjectionNames.ModulePath(module.Layer, ProjectionNames.All.Single(p => p.ShortName() == module.Module));
                for (int e = 0; e < module.Experts.Count; e++)
                    Assert.Equal(counts.GetValueOrDefault((path, e)), module.Experts[e].Selections - old.Experts[e].Selections);
            }
        }
    }
}
