using System.Text.Json.Nodes;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.LoraMixer;
using AdapterServe.Bench.Adapters;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Modeling.Safetensors;
using AdapterServe.Tests.AdapterServing;
using AdapterServe.Tests.Engine;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.Modeling;
using static TorchSharp.torch;
using static AdapterServe.Tests.Mixtures.MixtureNaive;

namespace AdapterServe.Tests.Mixtures;

/// <summary>
/// Issue 10: a registered LoRA used as a mixer's expert is one resident copy of its weights, whether it is called alone
/// or through the mixer, and whichever of the two is loaded first; the residency cache counts that copy once.
/// </summary>
public class SharedExpertWeightsTests
{
    static readonly ModelConfig Base = TinyModels.Llama;
    static string ModelDir => TinyModels.Directory(Base);
    static readonly Projection[] Targets = [Projection.Q, Projection.V, Projection.Up];

    /// <summary>Writes each expert with <paramref name="write"/>(directory, index) and registers it through the store.</summary>
    static async Task RegisterLoras(AdapterEngineFixture f, TempDir tmp, string[] names, Action<string, int> write)
    {
        for (int i = 0; i < names.Length; i++)
        {
            write(tmp.Sub(names[i]), i);
            await f.RegisterAsync(names[i], tmp.Sub(names[i]));
        }
    }

    /// <summary>Writes a LoRA-Mixer over the registered <paramref name="experts"/> and registers it through the store.</summary>
    static Task RegisterMixer(AdapterEngineFixture f, TempDir tmp, string name, string[] experts, int topK, Projection[] routed, int seed, bool routerBias = true)
    {
        MixtureWriters.WriteLoraMixer(tmp.Sub(name), Base, experts.Length, topK, rank: 4, routed, seed, expertNames: experts, routerBias: routerBias);
        return f.RegisterAsync(name, tmp.Sub(name));
    }

    static async Task<Completion> Complete(AdapterEngineFixture f, string adapter, int[] prompt, int tokens) =>
        (await EngineRunner.RunAsync(f.Engine, EngineRunner.Greedy(prompt, tokens, logprobs: 0) with { Adapters = [new AdapterRef(adapter)] }))[0];

    static async Task<LoadedAdapter> Resident(AdapterEngineFixture f, string name)
    {
        Assert.True(f.Store.Registry.TryResolve(name, out var record));
        var lease = f.Cache.Acquire(record);
        try
        {
            Assert.True(lease.HostLoaded.Wait(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken));
            LoadedAdapter? adapter = null;
            for (int i = 0; i < 100 && !f.Cache.TryGetReady(lease, out adapter); i++) await Task.Delay(20, TestContext.Current.CancellationToken);
            return adapter ?? throw new InvalidOperationException($"{name} did not become resident");
        }
        finally
        {
            f.Cache.Release(lease);
        }
    }

    [Fact]
    public async Task A_registered_expert_and_its_mixer_hold_one_copy_of_its_weights_whichever_loads_first()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string[] experts = [$"zara-{id}", $"forest-{id}", $"moss-{id}"];
        string mixer = $"mix-{id}";
        // Different ranks, scalings and one lora_B bias: each expert's rows of the stack differ in shape and scale.
        await RegisterLoras(f, tmp, experts, (dir, i) => PeftLoraWriter.Write(dir, Base, rank: 2 + 2 * i, Targets, seed: 40 + i, alpha: 3.0 + i, loraBias: i == 1));
        await RegisterMixer(f, tmp, mixer, experts, topK: 2, [Projection.Q, Projection.V], seed: 12);
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [3, 1, 4, 1, 5];

        Task<Completion> Run(string adapter) => Complete(f, adapter, prompt, 4);

        // The expert alone first: its own copy, equal to the naive LoRA model.
        var first = await Run(experts[0]);
        var seq = prompt.ToList();
        foreach (var (token, lp) in first.Tokens.Zip(first.Logprobs))
        {
            var expected = naive.Logits(seq, MixtureServingTests.Hook(MixtureServingTests.NaiveLora(tmp.Sub(experts[0]))))[-1].log_softmax(-1);
            Assert.Equal((int)expected.argmax().item<long>(), token);
            Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
            seq.Add(token);
        }
        var alone = await Resident(f, experts[0]);
        Assert.True(alone.Modules.Bytes > 0);
        Assert.Empty(alone.Modules.Shared);

        // The mixer loads: it stacks its experts, and the expert's idle copy of the same weights is dropped.
        await Run(mixer);
        var mixed = await Resident(f, mixer);
        long mixerBytes = f.Cache.Snapshot().DeviceBytes;
        Assert.Equal(mixed.Bytes, mixerBytes);
        Assert.Equal(1, f.Cache.Snapshot().DeviceAdapters);
        Assert.True(alone.IsDisposed);

        // The expert again, and an expert first used after the mixer: views of the mixer's stacks, not copies.
        var again = await Run(experts[0]);
        Assert.Equal(first.Tokens, again.Tokens);
        Assert.Equal(first.Logprobs.Select(l => l!.Logprob), again.Logprobs.Select(l => l!.Logprob));
        await Run(experts[1]);
        var stacks = mixed.Modules.Shared.ToHashSet();
        foreach (var (name, index) in new[] { (experts[0], 0), (experts[1], 1) })
        {
            var served = await Resident(f, name);
            var modules = served.LoraModules();
            var weights = (mixed.Modules as MixerModules)!.Weights;
            foreach (var p in new[] { Projection.Q, Projection.V })
            {
                var w = modules.Module(0, p)!;
                var (stack, _) = weights.Module(0, p)!.Value;
                Assert.Equal(0, w.Bytes);
                Assert.Same(stack.Storage, w.Storage);
                // The very memory of the stack: expert e's rows start e·r_max rows into A_all and Bᵀ_all.
                Assert.Equal(stack.AAll.storage<float>().data_ptr(), w.A.storage<float>().data_ptr());
                Assert.Equal(stack.BTAll.storage<float>().data_ptr(), w.BT.storage<float>().data_ptr());
                Assert.Equal(stack.AAll.storage_offset() + index * stack.Rank * stack.InFeatures, w.A.storage_offset());
                Assert.Equal(stack.BTAll.storage_offset() + index * stack.Rank * stack.OutFeatures, w.BT.storage_offset());
                Assert.True(w.A.allclose(stack.AAll.narrow(0, index * stack.Rank, w.Rank), rtol: 0, atol: 0));
                Assert.Equal(index == 1, w.Bias is not null);
            }
            // Up is an expert module the mixer does not route: that one stays the LoRA's own.
            Assert.Null(modules.Module(0, Projection.Up)!.Storage);
            Assert.True(modules.Shared.All(stacks.Contains));
        }

        // Device bytes: the mixer once, plus only the expert modules it does not hold (Up of two experts).
        var snapshot = f.Cache.Snapshot();
        Assert.Equal(3, snapshot.DeviceAdapters);
        long ownUp = 0;
        foreach (var name in experts[..2]) ownUp += (await Resident(f, name)).Modules.Bytes;
        Assert.Equal(mixerBytes + ownUp, snapshot.DeviceBytes);
        Assert.True(snapshot.DeviceBytes < mixerBytes + (await Resident(f, experts[0])).Bytes + (await Resident(f, experts[1])).Bytes);
    }

    [Fact]
    public async Task Deleting_a_mixer_leaves_the_expert_served_from_its_stack_intact_and_counts_that_stack_for_the_expert()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string[] experts = [$"a-{id}", $"b-{id}"];
        string mixer = $"mix-{id}";
        await RegisterLoras(f, tmp, experts, (dir, i) => PeftLoraWriter.Write(dir, Base, rank: 4, [Projection.Q, Projection.V], seed: 50 + i));
        await RegisterMixer(f, tmp, mixer, experts, topK: 1, [Projection.Q, Projection.V], seed: 13);
        int[] prompt = [9, 8, 7];

        Task<Completion> Run(string adapter) => Complete(f, adapter, prompt, 4);

        await Run(mixer);
        var viaStack = await Run(experts[0]);
        var expert = await Resident(f, experts[0]);
        Assert.Equal(0, expert.Modules.Bytes);
        long stackBytes = expert.Modules.Shared.Sum(s => s.Bytes);

        await f.Store.DeleteAsync(mixer, wait: true, TestContext.Current.CancellationToken);

        // The mixer's tensors are gone, the expert's views keep the stack's memory: same output, and the cache counts
        // the whole stack for the expert now (it stays allocated while the expert lives).
        Assert.Equal(ResidencyTier.Stored, f.Cache.Status(mixer).Tier);
        var after = await Run(experts[0]);
        Assert.Equal(viaStack.Tokens, after.Tokens);
        Assert.Equal(viaStack.Logprobs.Select(l => l!.Logprob), after.Logprobs.Select(l => l!.Logprob));
        Assert.Equal(stackBytes, f.Cache.Snapshot().DeviceBytes);

        // Loaded again with no mixer holding it: its own copy, read from its files.
        f.Cache.Forget(experts[0]);
        var reloaded = await Resident(f, experts[0]);
        Assert.Empty(reloaded.Modules.Shared);
        Assert.True(reloaded.Modules.Bytes > 0);
        Assert.Equal(viaStack.Tokens, (await Run(experts[0])).Tokens);
    }

    [Fact]
    public async Task Two_mixers_over_the_same_experts_share_one_stack_under_their_own_routers()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string[] experts = [$"p-{id}", $"q-{id}", $"s-{id}"];
        await RegisterLoras(f, tmp, experts, (dir, i) => PeftLoraWriter.Write(dir, Base, rank: 3 + i, Targets, seed: 60 + i, alpha: 2.0 + i));
        string[] mixers = [$"m1-{id}", $"m2-{id}"];
        for (int m = 0; m < mixers.Length; m++)
            await RegisterMixer(f, tmp, mixers[m], experts, topK: 2 - m, Targets, seed: 70 + m, routerBias: m == 0);
        using var naive = new NaiveLlama(ModelDir);
        int[] prompt = [2, 7, 1, 8];

        // Each mixer's tokens and logprobs are its own router's (the naive per-token loop), the second one loaded
        // while the first holds the stack.
        foreach (var mixer in mixers)
        {
            var result = await Complete(f, mixer, prompt, 3);
            var mixture = MixtureServingTests.NaiveMixer(tmp.Sub(mixer), tmp.Sub);
            var seq = prompt.ToList();
            foreach (var (token, lp) in result.Tokens.Zip(result.Logprobs))
            {
                var expected = naive.Logits(seq, MixtureServingTests.Hook(mixture))[-1].log_softmax(-1);
                Assert.Equal((int)expected.argmax().item<long>(), token);
                Assert.Equal(expected[token].item<double>(), lp!.Logprob, 1e-5);
                seq.Add(token);
            }
        }

        var first = (await Resident(f, mixers[0])).Modules as MixerModules;
        var second = (await Resident(f, mixers[1])).Modules as MixerModules;
        foreach (var p in Targets)
        {
            var (a, _) = first!.Weights.Module(1, p)!.Value;
            var (b, _) = second!.Weights.Module(1, p)!.Value;
            Assert.Same(a.Storage, b.Storage);
            Assert.Equal(a.AAll.storage<float>().data_ptr(), b.AAll.storage<float>().data_ptr());
            Assert.Equal(a.BTAll.storage<float>().data_ptr(), b.BTAll.storage<float>().data_ptr());
            Assert.NotEqual(a.Router.storage<float>().data_ptr(), b.Router.storage<float>().data_ptr());
        }
        // Device bytes: one stack per projection, and each mixer's own routers.
        Assert.Equal(first!.Shared.Sum(s => s.Bytes) + first.Bytes + second!.Bytes, f.Cache.Snapshot().DeviceBytes);
    }

    [Fact]
    public async Task An_expert_in_use_while_its_mixer_loads_keeps_its_copy_until_its_last_lease_goes()
    {
        await using var f = await AdapterEngineFixture.StartAsync(ModelDir);
        using var tmp = new TempDir();
        string id = Guid.NewGuid().ToString("N")[..8];
        string[] experts = [$"u-{id}", $"w-{id}", $"z-{id}"];
        // z adapts only up_proj, which the mixer does not route: its weights are in no stack.
        await RegisterLoras(f, tmp, experts, (dir, i) => PeftLoraWriter.Write(dir, Base, rank: 4, i < 2 ? [Projection.Q, Projection.V] : [Projection.Up], seed: 80 + i));
        string mixer = $"mix-{id}";
        await RegisterMixer(f, tmp, mixer, experts, topK: 1, [Projection.Q, Projection.V], seed: 14);
        int[] prompt = [4, 4, 2];
        var own = await Complete(f, experts[0], prompt, 4);
        await Complete(f, experts[2], prompt, 2);
        var unrouted = await Resident(f, experts[2]);

        // A running sequence's lease (held here directly) keeps the expert's own copy through the mixer's load ...
        Assert.True(f.Store.Registry.TryResolve(experts[0], out var record));
        var lease = f.Cache.Acquire(record);
        await Complete(f, mixer, prompt, 2);
        var during = await Resident(f, experts[0]);
        Assert.Empty(during.Modules.Shared);
        Assert.False(during.IsDisposed);

        // ... and when its last lease goes, that copy is dropped: the next use is views of the mixer's stack.
        f.Cache.Release(lease);
        Assert.True(during.IsDisposed);
        var after = await Complete(f, experts[0], prompt, 4);
        var served = await Resident(f, experts[0]);
        Assert.Equal(0, served.Modules.Bytes);
        Assert.NotEmpty(served.Modules.Shared);
        Assert.Equal(own.Tokens, after.Tokens);
        Assert.Equal(own.Logprobs.Select(l => l!.Logprob), after.Logprobs.Select(l => l!.Logprob));

        // The expert whose modules the mixer does not route keeps its own copy (dropping it would only reload it).
        await Complete(f, experts[2], prompt, 2);
        Assert.False(unrouted.IsDisposed);
        Assert.Same(unrouted, await Resident(f, experts[2]));
    }
}
