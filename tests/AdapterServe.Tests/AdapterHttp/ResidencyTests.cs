namespace AdapterServe.Tests.AdapterHttp;

/// <summary>Just-in-time loading behind a device cache of one adapter, through the whole server.</summary>
[Collection(AdapterHttpCollection.Name)]
public sealed class ResidencyTests(ReferenceServer reference)
{
    private const string Loads = "adapterserve_adapter_loads_total{result=\"ok\"}";
    private const string Evictions = "adapterserve_adapter_evictions_total";

    [Fact]
    public async Task Requests_alternating_over_three_adapters_with_one_device_slot_each_get_their_output_alone()
    {
        string[] names = ["jit-a", "jit-b", "jit-c"];
        var adapters = names.Select((n, i) => TinyAdapters.Lora(seed: 401 + i)).ToArray();
        string[] prompts = ["Once upon a time", "The cat sat"];
        var alone = new Dictionary<(int Adapter, int Prompt), Completion>();
        for (int a = 0; a < names.Length; a++)
            for (int p = 0; p < prompts.Length; p++)
                alone[(a, p)] = await reference.AloneAsync(names[a], adapters[a], new GreedyRequest(names[a], prompts[p], 10));
        Assert.Equal(3, alone.Where(e => e.Key.Prompt == 0).Select(e => string.Join('|', e.Value.Tokens)).Distinct().Count());

        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["Adapters:Residency:MaxDeviceAdapters"] = "1" });
        for (int a = 0; a < names.Length; a++) await server.UploadOkAsync(names[a], adapters[a]);
        foreach (var name in names)
            Assert.Equal("stored", (string?)(await server.GetAsync($"/v1/adapters/{name}")).Body!["status"]);
        var before = await server.MetricsAsync();

        // One after another: a, b, c, a, b, c, … (every request needs the slot another adapter holds).
        for (int round = 0; round < 2; round++)
            for (int a = 0; a < names.Length; a++)
            {
                int p = (round + a) % prompts.Length;
                (await server.CompleteAsync(new GreedyRequest(names[a], prompts[p], 10)))
                    .AssertSameAs(alone[(a, p)], $"{names[a]} on prompt {p}, round {round}");
            }

        // All at once, streamed and whole, interleaved: each waits for the slot without blocking the others' decode.
        var jobs = Enumerable.Range(0, 12).Select(async i =>
        {
            int a = i % names.Length, p = i / names.Length % prompts.Length;
            var request = new GreedyRequest(names[a], prompts[p], 10);
            var result = i % 2 == 0 ? await server.StreamAsync(request) : await server.CompleteAsync(request);
            result.AssertSameAs(alone[(a, p)], $"concurrent request {i}: {names[a]} on prompt {p}");
        });
        await Task.WhenAll(jobs);

        var after = await server.MetricsAsync();
        Assert.True(after.Value(Loads) - before.Value(Loads) >= names.Length, $"{Loads}: {before.Value(Loads)} → {after.Value(Loads)}");
        Assert.True(after.Value(Evictions) - before.Value(Evictions) >= names.Length, $"{Evictions}: {before.Value(Evictions)} → {after.Value(Evictions)}");

        // At most one adapter is on the device; each was loaded from storage at least once.
        var (_, list) = await server.GetAsync("/v1/adapters");
        var entries = list!["data"]!.AsArray().Select(e => e!).ToList();
        Assert.True(entries.Count(e => (string?)e["status"] == "device") <= 1, list.ToJsonString());
        Assert.All(entries, e => Assert.True((long)e["load_count"]! >= 1, e.ToJsonString()));
        Assert.All(entries, e => Assert.Equal(0, (int)e["active_sequences"]!));
    }
}
