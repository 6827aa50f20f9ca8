using AdapterServe.Bench.Adapters;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Infrastructure;
using AdapterServe.Tests.AdapterHttp;
using AdapterServe.Tests.Server;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;

namespace AdapterServe.Tests.Observability;

/// <summary>
/// <c>/dashboard</c> in a real headless Chromium (Debian's <c>chromium</c>, driven by Playwright), against the whole server on
/// a loopback port. Screenshots land in <c>artifacts/</c> next to the test binaries.
/// </summary>
public sealed class DashboardBrowserTests
{
    private const string Chromium = "/usr/bin/chromium";

    internal static string ArtifactsDirectory => Directory.CreateDirectory(Path.Combine(AppContext.BaseDirectory, "artifacts")).FullName;

    [Fact]
    public async Task Dashboard_loads_without_console_errors_and_shows_live_serving_numbers()
    {
        await using var server = await LoopbackServer.StartAsync();
        await using var browser = await BrowserSession.OpenAsync();
        var page = browser.Page;

        await page.GotoAsync(server.Url + "/dashboard");
        await page.WaitForSelectorAsync("#status.ok", new() { Timeout = 15_000 });
        string before = await page.InnerTextAsync("#serving");
        Assert.Contains("running", before);

        await server.CompleteAsync("tiny", 8);
        await page.WaitForFunctionAsync("() => [...document.querySelectorAll('#serving .card')].some(c => c.innerText.includes('adapter loads'))");
        await page.WaitForFunctionAsync("""() => !document.querySelector('#serving').innerText.includes('generated tokens/s\n–')""", null, new() { Timeout = 15_000 });
        await page.ScreenshotAsync(new() { Path = Path.Combine(ArtifactsDirectory, "dashboard-serving.png"), FullPage = true });
        Assert.Empty(browser.ConsoleErrors);
    }

    [Fact]
    public async Task Once_a_mixture_served_tokens_its_heatmap_has_a_cell_per_layer_and_expert_and_its_shares_sum_to_one()
    {
        const int experts = 4;
        string name = "dash-omoe-" + Guid.NewGuid().ToString("N")[..8];   // expert series are process-wide: a name no other test serves
        await using var server = await LoopbackServer.StartAsync();
        using var tmp = new TempDir();
        string dir = tmp.Sub("omoe");
        MixtureWriters.WriteOmoe(dir, TinyModel.Config, experts, rank: 4, [Projection.Q, Projection.V], seed: 17, topK: 2);
        await server.UploadAsync(name, dir);
        await server.CompleteAsync(name, 8);

        await using var browser = await BrowserSession.OpenAsync();
        var page = browser.Page;
        await page.GotoAsync(server.Url + "/dashboard");
        await page.WaitForFunctionAsync($"() => [...document.querySelectorAll('#adapter option')].some(o => o.value === '{name}')", null, new() { Timeout = 15_000 });
        await page.SelectOptionAsync("#adapter", name);
        await page.SelectOptionAsync("#module", "v_proj");
        int cells = TinyModel.Config.NumHiddenLayers * experts;
        await page.WaitForFunctionAsync($"() => document.querySelectorAll('#heatmap .cell').length === {cells}", null, new() { Timeout = 15_000 });

        // Every (layer, expert) once; top-2 of 4 routes each token to two experts, so per layer the utilisations sum to 2.
        var labels = await page.EvalOnSelectorAllAsync<string[]>("#heatmap .cell", "cs => cs.map(c => c.dataset.layer + '/' + c.dataset.expert)");
        Assert.Equal(cells, labels.Distinct().Count());
        var perLayer = await page.EvalOnSelectorAllAsync<double[]>("#heatmap .cell", "cs => cs.map(c => Number(c.innerText))");
        for (int layer = 0; layer < TinyModel.Config.NumHiddenLayers; layer++)
            Assert.Equal(2.0, perLayer.Skip(layer * experts).Take(experts).Sum(), 1);
        var shares = await page.EvalOnSelectorAllAsync<double[]>("#shares .bar .share", "ss => ss.map(s => parseFloat(s.innerText))");
        Assert.Equal(experts, shares.Length);
        Assert.Equal(100.0, shares.Sum(), 0);
        Assert.Contains("v_proj", await page.InnerTextAsync("#balance tbody"));
        await page.ScreenshotAsync(new() { Path = Path.Combine(ArtifactsDirectory, "dashboard-experts.png"), FullPage = true });
        Assert.Empty(browser.ConsoleErrors);
    }

    /// <summary>A headless Chromium page that records console errors and page errors.</summary>
    internal sealed class BrowserSession : IAsyncDisposable
    {
        private readonly IPlaywright _playwright;
        private readonly IBrowser _browser;

        private BrowserSession(IPlaywright playwright, IBrowser browser, IPage page)
        {
            _playwright = playwright;
            _browser = browser;
            Page = page;
            page.Console += (_, m) => { if (m.Type == "error") lock (ConsoleErrors) ConsoleErrors.Add(m.Text); };
            page.PageError += (_, e) => { lock (ConsoleErrors) ConsoleErrors.Add(e); };
        }

        public IPage Page { get; }
        public List<string> ConsoleErrors { get; } = [];

        public static async Task<BrowserSession> OpenAsync()
        {
            if (!File.Exists(Chromium)) Assert.Skip($"{Chromium} not installed (Debian's chromium package; .ci/run installs it)");
            var playwright = await Playwright.CreateAsync();
            var browser = await playwright.Chromium.LaunchAsync(new() { ExecutablePath = Chromium, Headless = true, Args = ["--no-sandbox"] });
            var page = await browser.NewPageAsync(new() { ViewportSize = new() { Width = 1280, Height = 900 } });
            return new BrowserSession(playwright, browser, page);
        }

        public async ValueTask DisposeAsync()
        {
            await _browser.DisposeAsync();
            _playwright.Dispose();
        }
    }

    /// <summary>The whole server on the tiny model, on a loopback port a browser can reach.</summary>
    internal sealed class LoopbackServer : IAsyncDisposable
    {
        private readonly ServerFactory _factory;
        private readonly HttpClient _client;

        private LoopbackServer(ServerFactory factory, string url)
        {
            _factory = factory;
            Url = url;
            _client = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromSeconds(120) };
        }

        public string Url { get; }
        public HttpClient Client => _client;

        public static async Task<LoopbackServer> StartAsync(IDictionary<string, string?>? settings = null)
        {
            var all = TinyModel.Settings();
            all["Server:Host"] = "127.0.0.1";
            all["Server:Port"] = "0";
            all["admin-key"] = AdapterServer.AdminKey;
            foreach (var (k, v) in settings ?? new Dictionary<string, string?>()) all[k] = v;
            var factory = new ServerFactory(all);
            factory.UseKestrel();
            factory.StartServer();
            string address = factory.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
            await TinyModel.WaitUntilReadyAsync(factory.Services.GetRequiredService<IGenerationEngine>());
            return new LoopbackServer(factory, address.TrimEnd('/'));
        }

        public async Task CompleteAsync(string model, int maxTokens)
        {
            var (status, body) = await Http.PostAsync(_client, "/v1/completions", $$"""{"model":"{{model}}","prompt":"hello there","max_tokens":{{maxTokens}},"temperature":0,"ignore_eos":true}""");
            Assert.True(status == 200, body?.ToJsonString());
        }

        /// <summary>Uploads the files of <paramref name="directory"/> as a new adapter (201 expected).</summary>
        public async Task UploadAsync(string name, string directory)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/adapters")
            {
                Content = AdapterApiHost.Form(name, Directory.GetFiles(directory).Select(f => (Path.GetFileName(f), (string?)Path.GetFileName(f), File.ReadAllBytes(f)))),
            };
            request.Headers.Authorization = new("Bearer", AdapterServer.AdminKey);
            using var response = await _client.SendAsync(request);
            Assert.True((int)response.StatusCode == 201, await response.Content.ReadAsStringAsync());
        }

        public async ValueTask DisposeAsync()
        {
            _client.Dispose();
            await _factory.DisposeAsync();
        }
    }
}
