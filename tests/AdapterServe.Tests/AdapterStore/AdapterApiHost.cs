using System.Net.Http.Headers;
using AdapterServe.Adapters;
using AdapterServe.Modeling;
using AdapterServe.Server.Adapters;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>A minimal web app hosting only the adapter endpoints (no Program.cs), on a TestServer.</summary>
public sealed class AdapterApiHost : IAsyncDisposable
{
    public const string AdminKey = "sk-admin-test";
    public const string UserKey = "sk-user-test";

    private readonly WebApplication _app;

    private AdapterApiHost(WebApplication app, FakeResidency residency, string dataDirectory)
    {
        _app = app;
        Residency = residency;
        DataDirectory = dataDirectory;
        Client = app.GetTestClient();
    }

    public HttpClient Client { get; }
    public FakeResidency Residency { get; }
    public string DataDirectory { get; }
    public IServiceProvider Services => _app.Services;

    public static async Task<AdapterApiHost> StartAsync(string dataDirectory, FakeResidency? residency = null, ModelConfig? baseModel = null,
        IDictionary<string, string?>? settings = null, string[]? args = null, bool swagger = false, Action<IServiceCollection>? services = null)
    {
        residency ??= new FakeResidency();
        var builder = WebApplication.CreateBuilder(args ?? []);
        builder.WebHost.UseTestServer();
        builder.Logging.ClearProviders();
        var config = new Dictionary<string, string?>
        {
            ["Adapters:DataDirectory"] = dataDirectory,
            ["Adapters:MaxUploadBytes"] = (64 * 1024).ToString(),
            ["Adapters:MaxArchiveEntries"] = "8",
            ["Adapters:MaxUncompressedBytes"] = (256 * 1024).ToString(),
            ["Adapters:RetiredVersionGraceSeconds"] = "0",
        };
        if (args is null) config["Adapters:AdminKeys:0"] = AdminKey;
        foreach (var (k, v) in settings ?? new Dictionary<string, string?>()) config[k] = v;
        builder.Configuration.AddInMemoryCollection(config);
        builder.Services.AddSingleton(baseModel ?? TestAdapter.TinyBase);
        builder.Services.AddSingleton<IAdapterResidency>(residency);
        builder.Services.AddAdapterStore(builder.Configuration);
        services?.Invoke(builder.Services);
        builder.Services.AddEndpointsApiExplorer();
        if (swagger) builder.Services.AddSwaggerGen();
        var app = builder.Build();
        if (swagger) app.UseSwagger();
        app.MapAdapterEndpoints();
        await app.StartAsync(TestContext.Current.CancellationToken);
        return new AdapterApiHost(app, residency, dataDirectory);
    }

    public HttpRequestMessage Request(HttpMethod method, string path, HttpContent? content = null, string? key = AdminKey)
    {
        var request = new HttpRequestMessage(method, path) { Content = content };
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return request;
    }

    public Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, HttpContent? content = null, string? key = AdminKey) =>
        Client.SendAsync(Request(method, path, content, key), TestContext.Current.CancellationToken);

    public Task<HttpResponseMessage> UploadAsync(string? name, IEnumerable<(string Part, string? FileName, byte[] Bytes)> parts, string query = "", string? key = AdminKey) =>
        SendAsync(HttpMethod.Post, "/v1/adapters" + query, Form(name, parts), key);

    public Task<HttpResponseMessage> UploadAsync(string name, TestAdapter adapter, string query = "") =>
        UploadAsync(name, adapter.Files().Select(f => (f.Name, (string?)f.Name, f.Bytes)), query);

    public static MultipartFormDataContent Form(string? name, IEnumerable<(string Part, string? FileName, byte[] Bytes)> parts)
    {
        var form = new MultipartFormDataContent();
        if (name is not null) form.Add(new StringContent(name), "name");
        foreach (var (part, fileName, bytes) in parts)
        {
            var content = new ByteArrayContent(bytes);
            content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            if (fileName is null) form.Add(content, part); else form.Add(content, part, fileName);
        }
        return form;
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
