using AdapterServe.Adapters.Experts;
using AdapterServe.Modeling;
using Prometheus;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

public class ExpertAccountingTests
{
    static ExpertUsage NewUsage() => new(new ExpertUsageMetrics(Metrics.NewCustomRegistry()));

    /// <summary>[N, K] distinct expert ids per row, random, and the same ids as a host array.</summary>
    static (Tensor Indices, long[,] Host) RandomTopK(int n, int k, int experts, int seed)
    {
        var random = new Random(seed);
        var host = new long[n, k];
        for (int t = 0; t < n; t++)
        {
            var ids = Enumerable.Range(0, experts).OrderBy(_ => random.Next()).Take(k).ToArray();
            for (int j = 0; j < k; j++) host[t, j] = ids[j];
        }
        var flat = new long[n * k];
        Buffer.BlockCopy(host, 0, flat, 0, flat.Length * sizeof(long));
        return (tensor(flat, ScalarType.Int64).view(n, k), host);
    }

    [Fact]
    public void Top_k_selections_are_counted_per_expert_exactly_once_per_token_and_flushed_together()
    {
        var usage = NewUsage();
        var q = new ExpertSite("mix", 0, Projection.Q, ["zara", "forest", "sea", "hill"]);
        var down = new ExpertSite("mix", 3, Projection.Down, ["zara", "forest", "sea", "hill"]);
        var (qIdx, qHost) = RandomTopK(n: 37, k: 3, experts: 4, seed: 1);
        var (dIdx1, dHost1) = RandomTopK(n: 5, k: 2, experts: 4, seed: 2);
        var (dIdx2, dHost2) = RandomTopK(n: 9, k: 2, experts: 4, seed: 3);

        using (var tally = usage.BeginStep())
        {
            tally.RecordTopK(q, qIdx);
            tally.RecordTopK(down, dIdx1);
            tally.RecordTopK(down, dIdx2);                    // the same site twice in one step adds up
            Assert.Null(usage.Snapshot("mix"));                // nothing reaches the host before the flush
            tally.Flush();
            Assert.Equal(0, tally.PendingSites);
        }

        long[] Naive(params long[][,] routings)
        {
            var counts = new long[4];
            foreach (var r in routings)
                for (int t = 0; t < r.GetLength(0); t++)
                    for (int j = 0; j < r.GetLength(1); j++) counts[r[t, j]]++;
            return counts;
        }
        var snapshot = usage.Snapshot("mix")!;
        Assert.Equal([(0, "q_proj"), (3, "down_proj")], snapshot.Modules.Select(m => (m.Layer, m.Module)));
        var qUsage = snapshot.Modules[0];
        Assert.Equal(37, qUsage.RoutedTokens);
        Assert.Equal(Naive(qHost), qUsage.Experts.Select(e => e.Selections));
        Assert.Equal(37 * 3, qUsage.Selections);
        var downUsage = snapshot.Modules[1];
        Assert.Equal(14, downUsage.RoutedTokens);
        Assert.Equal(Naive(dHost1, dHost2), downUsage.Experts.Select(e => e.Selections));

        var naiveQ = Naive(qHost);
        usage.Publish();                                                   // what a scrape runs first
        for (int e = 0; e < 4; e++)
        {
            string label = q.Experts[e];
            Assert.Equal(naiveQ[e], usage.Metrics.Selections.WithLabels("mix", "0", "q_proj", label).Value);
            Assert.Equal((double)naiveQ[e] / (37 * 3), qUsage.Experts[e].Share, 12);
            Assert.Equal((double)naiveQ[e] / 37, qUsage.Experts[e].Utilisation, 12);
        }
        Assert.Equal(37, usage.Metrics.RoutedTokens.WithLabels("mix", "0", "q_proj").Value);
        Assert.Equal(14, usage.Metrics.RoutedTokens.WithLabels("mix", "3", "down_proj").Value);
    }

    [Fact]
    public void Per_row_selection_counts_are_summed_over_the_step_and_accumulate_across_steps()
    {
        var usage = NewUsage();
        var site = new ExpertSite("omoe", 1, Projection.V, ExpertSite.Indexed(3));
        float[,] rows = { { 1, 0, 1 }, { 0, 0, 1 }, { 1, 1, 1 }, { 0, 2, 0 } };   // a tree may reach an expert twice
        var flat = rows.Cast<float>().ToArray();
        for (int step = 0; step < 2; step++)
        {
            using var tally = usage.BeginStep();
            tally.RecordSelections(site, tensor(flat).view(4, 3));
            tally.Flush();
        }
        var module = usage.Snapshot("omoe")!.Modules.Single();
        Assert.Equal(8, module.RoutedTokens);
        Assert.Equal(new long[] { 4, 6, 6 }, module.Experts.Select(e => e.Selections));
        Assert.Equal(["0", "1", "2"], module.Experts.Select(e => e.Expert));
        usage.Publish();
        Assert.Equal(6, usage.Metrics.Selections.WithLabels("omoe", "1", "v_proj", "2").Value);
    }

    [Fact]
    public void A_dense_routing_counts_every_expert_once_per_routed_token()
    {
        var usage = NewUsage();
        var site = new ExpertSite("omoe", 0, Projection.Up, ExpertSite.Indexed(4));
        using var tally = usage.BeginStep();
        tally.RecordAll(site, 6);
        tally.RecordAll(site, 3);
        tally.Flush();
        var module = usage.Snapshot("omoe")!.Modules.Single();
        Assert.Equal(9, module.RoutedTokens);
        Assert.All(module.Experts, e => Assert.Equal(9, e.Selections));
        Assert.Equal(1.0, module.LoadBalance!.Value, 12);
    }

    [Fact]
    public void A_discarded_step_counts_nothing()
    {
        var usage = NewUsage();
        var site = new ExpertSite("mix", 0, Projection.Q, ["a", "b"]);
        using (var tally = usage.BeginStep())
        {
            tally.RecordTopK(site, tensor(new long[] { 0, 1, 1 }).view(3, 1));
            tally.Discard();
            tally.Flush();
        }
        Assert.Null(usage.Snapshot("mix"));
        usage.Publish();
        Assert.Equal(0, usage.Metrics.RoutedTokens.WithLabels("mix", "0", "q_proj").Value);
    }

    [Fact]
    public void Load_balance_is_the_entropy_of_the_shares_over_the_log_of_the_expert_count()
    {
        Assert.Equal(1.0, ExpertUsage.LoadBalance([5, 5, 5, 5])!.Value, 12);
        Assert.Equal(0.0, ExpertUsage.LoadBalance([0, 9, 0])!.Value, 12);
        Assert.Null(ExpertUsage.LoadBalance([0, 0]));
        // shares 1/2, 1/4, 1/4 over 4 experts: H = 1.5 ln 2, normalised by ln 4 = 2 ln 2.
        Assert.Equal(0.75, ExpertUsage.LoadBalance([2, 1, 1, 0])!.Value, 12);

        var usage = NewUsage();
        var site = new ExpertSite("mix", 0, Projection.Q, ["a", "b", "c", "d"]);
        using var tally = usage.BeginStep();
        tally.RecordTopK(site, tensor(new long[] { 0, 0, 1, 2 }).view(4, 1));
        tally.Flush();
        Assert.Equal(0.75, usage.Snapshot("mix")!.Modules.Single().LoadBalance!.Value, 12);
    }

    [Fact]
    public void Forget_drops_the_in_memory_counts_of_one_adapter_only()
    {
        var usage = NewUsage();
        using var tally = usage.BeginStep();
        tally.RecordTopK(new ExpertSite("a", 0, Projection.Q, ["x", "y"]), tensor(new long[] { 0, 1 }).view(2, 1));
        tally.RecordTopK(new ExpertSite("b", 0, Projection.Q, ["x", "y"]), tensor(new long[] { 1, 1 }).view(2, 1));
        tally.Flush();
        usage.Forget("a");
        Assert.Null(usage.Snapshot("a"));
        Assert.Equal(["b"], usage.Adapters);
    }

    [Fact]
    public async Task Load_balance_gauge_is_the_normalised_entropy_of_the_last_window_steps_of_selections()
    {
        var registry = Metrics.NewCustomRegistry();
        var usage = new ExpertUsage(new ExpertUsageMetrics(registry)) { LoadBalanceWindowSteps = 2 };
        var site = new ExpertSite("balance", 1, Projection.V, ["a", "b", "c"]);
        // Hand computation: H = -Σ p ln p / ln 3 over the summed counts of the last two steps.
        static double Entropy(params double[] counts)
        {
            double total = counts.Sum(), h = 0;
            foreach (var n in counts) if (n > 0) h -= n / total * Math.Log(n / total);
            return h / Math.Log(counts.Length);
        }
        double Gauge()
        {
            usage.Publish();
            return usage.Metrics.LoadBalance.WithLabels("balance", "1", "v_proj").Value;
        }

        usage.Add(site, 4, [4, 0, 0]);                       // one expert takes everything: 0
        Assert.Equal(0, Gauge(), 12);
        usage.Add(site, 4, [0, 4, 0]);                       // window {4,0,0}+{0,4,0} = {4,4,0}
        Assert.Equal(Entropy(4, 4, 0), Gauge(), 12);
        Assert.Equal(Math.Log(2) / Math.Log(3), Gauge(), 12);
        usage.Add(site, 6, [1, 2, 3]);                       // the first step leaves: {0,4,0}+{1,2,3} = {1,6,3}
        Assert.Equal(Entropy(1, 6, 3), Gauge(), 12);
        usage.Add(site, 3, [1, 1, 1]);                       // {1,2,3}+{1,1,1} = {2,3,4}
        Assert.Equal(Entropy(2, 3, 4), Gauge(), 12);
        Assert.Equal(Entropy(2, 3, 4), usage.WindowLoadBalance("balance", 1, Projection.V)!.Value, 12);

        // The JSON view has both figures: since start {6,7,4}, window {2,3,4}.
        var module = usage.Snapshot("balance")!.Modules.Single();
        Assert.Equal(Entropy(6, 7, 4), module.LoadBalance!.Value, 12);
        Assert.Equal(Entropy(2, 3, 4), module.WindowLoadBalance!.Value, 12);

        // Forgetting the adapter drops its gauge series.
        usage.Forget("balance");
        using var text = new MemoryStream();
        await registry.CollectAndExportAsTextAsync(text, TestContext.Current.CancellationToken);
        var gaugeLines = System.Text.Encoding.UTF8.GetString(text.ToArray()).Split('\n').Where(l => l.StartsWith("adapterserve_expert_load_balance{", StringComparison.Ordinal));
        Assert.DoesNotContain(gaugeLines, l => l.Contains("adapter=\"balance\"", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Counters_change_only_when_the_registry_is_collected_so_a_scrape_never_splits_a_step()
    {
        var registry = Metrics.NewCustomRegistry();
        var usage = new ExpertUsage(new ExpertUsageMetrics(registry));
        var site = new ExpertSite("dense", 0, Projection.Q, ExpertSite.Indexed(2));
        async Task<string> Scrape()
        {
            using var text = new MemoryStream();
            await registry.CollectAndExportAsTextAsync(text, TestContext.Current.CancellationToken);
            return System.Text.Encoding.UTF8.GetString(text.ToArray());
        }

        usage.Add(site, 5, [5, 5]);
        usage.Add(site, 3, [3, 3]);
        // Added but not collected: the collectors still read zero (a reader between two counters' updates would see them apart).
        Assert.Equal(0, usage.Metrics.RoutedTokens.WithLabels("dense", "0", "q_proj").Value);
        Assert.Equal(0, usage.Metrics.Selections.WithLabels("dense", "0", "q_proj", "0").Value);

        string text = await Scrape();
        Assert.Contains("adapterserve_expert_routed_tokens_total{adapter=\"dense\",layer=\"0\",module=\"q_proj\"} 8", text);
        Assert.Contains("adapterserve_expert_selections_total{adapter=\"dense\",layer=\"0\",module=\"q_proj\",expert=\"1\"} 8", text);
        usage.Add(site, 2, [2, 2]);
        text = await Scrape();
        Assert.Contains("adapterserve_expert_routed_tokens_total{adapter=\"dense\",layer=\"0\",module=\"q_proj\"} 10", text);
        Assert.Contains("adapterserve_expert_selections_total{adapter=\"dense\",layer=\"0\",module=\"q_proj\",expert=\"0\"} 10", text);
    }

    [Fact]
    public void Mixture_kinds_of_one_step_share_one_tally_and_the_last_to_leave_flushes_it()
    {
        var usage = NewUsage();
        var mixer = new ExpertSite("mixer", 0, Projection.Q, ["a", "b"]);
        var omoe = new ExpertSite("omoe", 0, Projection.Q, ExpertSite.Indexed(3));
        var first = usage.JoinStep();                                            // the LoRA-Mixer kind's executor
        var second = usage.JoinStep();                                           // the OMoE kind's executor, same step
        Assert.Same(first, second);
        first.RecordTopK(mixer, tensor(new long[] { 0, 1, 1 }, ScalarType.Int64).view(3, 1));   // [N=3, K=1]
        second.RecordAll(omoe, 2);
        first.Leave();
        Assert.Null(usage.Snapshot("mixer"));                                    // nothing copied while the step is held
        second.Leave();
        Assert.Equal([1L, 2L], usage.Snapshot("mixer")!.Modules.Single().Experts.Select(e => e.Selections));
        Assert.Equal([2L, 2L, 2L], usage.Snapshot("omoe")!.Modules.Single().Experts.Select(e => e.Selections));
        Assert.NotSame(first, usage.JoinStep());                                 // the next step gets a fresh tally
    }

    [Fact]
    public void A_step_abandoned_by_one_mixture_kind_counts_nothing_for_any_kind_and_the_next_step_counts_again()
    {
        var usage = NewUsage();
        var mixer = new ExpertSite("mixer", 0, Projection.Q, ["a", "b"]);
        var omoe = new ExpertSite("omoe", 0, Projection.Q, ExpertSite.Indexed(3));
        var first = usage.JoinStep();
        var second = usage.JoinStep();
        first.RecordTopK(mixer, tensor(new long[] { 0, 1, 1 }, ScalarType.Int64).view(3, 1));   // [N=3, K=1]
        second.RecordAll(omoe, 2);
        first.Abandon();                                                         // the forward threw (AdapterBatch.Abandon)
        second.Abandon();
        Assert.Null(usage.Snapshot("mixer"));
        Assert.Null(usage.Snapshot("omoe"));
        Assert.Equal(0, first.PendingSites);                                     // the step's device counts were freed

        var retry = usage.JoinStep();                                            // the retried step
        Assert.NotSame(first, retry);
        retry.RecordTopK(mixer, tensor(new long[] { 1 }, ScalarType.Int64).view(1, 1));
        retry.Leave();
        Assert.Equal([0L, 1L], usage.Snapshot("mixer")!.Modules.Single().Experts.Select(e => e.Selections));
    }
}
