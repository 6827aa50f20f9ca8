using System.Net;
using AdapterServe.Adapters;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using AdapterServe.Server.Adapters;
using AdapterServe.Server.Hosting;
using AdapterServe.Tests.AdapterHttp;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>Where the data lives (issue 8 part 8, and issue 12's "Server:DataDir is bound but never read").</summary>
public sealed class StoreLocationTests : IDisposable
{
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Default_data_root_is_xdg_data_home_else_local_share_never_the_working_directory()
    {
        Assert.Equal("/x/data/adapterserve", AdapterStoreOptions.DefaultDataRoot(v => v switch { "XDG_DATA_HOME" => "/x/data", "HOME" => "/home/u", _ => null }));
        Assert.Equal("/home/u/.local/share/adapterserve", AdapterStoreOptions.DefaultDataRoot(v => v == "HOME" ? "/home/u" : null));
        Assert.Equal("/home/u/.local/share/adapterserve", AdapterStoreOptions.DefaultDataRoot(v => v switch { "XDG_DATA_HOME" => "relative", "HOME" => "/home/u", _ => null }));
        Assert.Equal("/home/u/.local/share/adapterserve/models/demo-x", new AdapterStoreOptions().StoreDirectory("demo-x", v => v == "HOME" ? "/home/u" : null));
    }

    [Fact]
    public async Task Adapters_of_different_base_models_live_in_separate_stores_under_one_data_root()
    {
        string root = _temp.Sub("root");
        var other = TestAdapter.TinyBase with { IntermediateSize = TestAdapter.TinyBase.IntermediateSize + 8 };
        global::AdapterServe.Adapters.Store.AdapterStore Open(ModelConfig config, string id) =>
            new(new AdapterStoreOptions { DataRoot = root }, config, new FakeResidency(), new AdapterRegistry(), baseModelId: id);

        var first = Open(TestAdapter.TinyBase, "base-a");
        using (var staging = first.BeginStaging())
        {
            TestAdapter.Lora().WriteTo(staging.ReceivedDirectory);
            await first.CommitAsync("mine", staging, replace: false, "test", TestContext.Current.CancellationToken);
        }

        var sameShapeOtherName = Open(TestAdapter.TinyBase, "base-b");
        var otherShapeSameName = Open(other, "base-a");
        var again = Open(TestAdapter.TinyBase, "base-a");

        Assert.Equal(Path.Combine(root, "models", BaseModelIdentity.Of("base-a", TestAdapter.TinyBase)), first.DataDirectory);
        Assert.NotEqual(first.DataDirectory, sameShapeOtherName.DataDirectory);
        Assert.NotEqual(first.DataDirectory, otherShapeSameName.DataDirectory);
        Assert.Empty(sameShapeOtherName.Registry.List());
        Assert.Empty(otherShapeSameName.Registry.List());
        Assert.Equal(["mine"], again.Registry.List().Select(r => r.Name));
    }

    [Fact]
    public async Task Version_stored_for_another_base_shape_is_not_served_from_an_explicit_store_folder()
    {
        string folder = _temp.Sub("explicit");
        var store = new global::AdapterServe.Adapters.Store.AdapterStore(new AdapterStoreOptions { DataDirectory = folder }, TestAdapter.TinyBase, new FakeResidency(), new AdapterRegistry());
        using (var staging = store.BeginStaging())
        {
            TestAdapter.Lora(projections: [Projection.Q]).WriteTo(staging.ReceivedDirectory);
            await store.CommitAsync("q-only", staging, replace: false, "test", TestContext.Current.CancellationToken);
        }
        // Same q_proj shape, another MLP width: the adapter would validate, but it was made for another base.
        var other = TestAdapter.TinyBase with { IntermediateSize = TestAdapter.TinyBase.IntermediateSize + 8 };
        var reopened = new global::AdapterServe.Adapters.Store.AdapterStore(new AdapterStoreOptions { DataDirectory = folder }, other, new FakeResidency(), new AdapterRegistry());
        Assert.Empty(reopened.Registry.List());
        Assert.True(Directory.Exists(Path.Combine(folder, "adapters", "q-only", "v1")), "left on disk for its own base");
    }

    [Fact]
    public async Task Adapter_named_like_the_base_model_is_refused_with_400()
    {
        await using var server = await AdapterServer.StartAsync();
        var (status, body) = await server.UploadAsync(AdapterServer.Base, TinyAdapters.Lora(seed: 901));
        Assert.Equal(400, status);
        Assert.Equal("invalid_adapter_name", (string?)body!["error"]!["code"]);
        Assert.Equal("name", (string?)body!["error"]!["param"]);
        (status, body) = await server.UploadAsync(AdapterServer.Base.ToUpperInvariant(), TinyAdapters.Lora(seed: 901));
        Assert.Equal(400, status);
    }
}

/// <summary>Tests that set process environment variables run alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class EnvironmentCollection
{
    public const string Name = "ProcessEnvironment";
}

[Collection(EnvironmentCollection.Name)]
public sealed class DataDirEnvironmentTests : IDisposable
{
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    private global::AdapterServe.Adapters.Store.AdapterStore StoreFor(string[] args)
    {
        string[] flags = CommandLineFlags.Translate(args);
        var builder = WebApplication.CreateBuilder(flags);
        builder.AddServerConfiguration(flags);
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(TestAdapter.TinyBase);
        builder.Services.AddSingleton<IAdapterResidency>(new FakeResidency());
        builder.Services.AddAdapterStore(builder.Configuration);
        var app = builder.Build();
        return app.Services.GetRequiredService<global::AdapterServe.Adapters.Store.AdapterStore>();
    }

    [Fact]
    public void Server_DataDir_from_the_environment_or_the_flag_places_the_store()
    {
        const string variable = "ADAPTERSERVE_Server__DataDir";
        string fromEnvironment = _temp.Sub("from-env"), fromFlag = _temp.Sub("from-flag");
        Environment.SetEnvironmentVariable(variable, fromEnvironment);
        try
        {
            Assert.StartsWith(Path.Combine(fromEnvironment, "models") + Path.DirectorySeparatorChar, StoreFor([]).DataDirectory);
            Assert.StartsWith(Path.Combine(fromFlag, "models") + Path.DirectorySeparatorChar, StoreFor(["--data-dir", fromFlag]).DataDirectory);
            Assert.True(Directory.Exists(Path.Combine(StoreFor([]).DataDirectory, "adapters")));
        }
        finally { Environment.SetEnvironmentVariable(variable, null); }
    }

    [Fact]
    public async Task Allowed_adapter_paths_flag_confines_path_registration()
    {
        string allowed = Directory.CreateDirectory(_temp.Sub("allowed")).FullName;
        var store = StoreFor(["--data-dir", _temp.Sub("data"), "--allowed-adapter-paths", allowed + ",/nonexistent-too"]);
        string outside = TestAdapter.Lora().WriteTo(_temp.Sub("outside"));
        var e = await Assert.ThrowsAsync<AdapterStoreException>(() => store.RegisterPathAsync("x", outside, replace: false, TestContext.Current.CancellationToken));
        Assert.Equal(403, e.StatusCode);
        await store.RegisterPathAsync("y", TestAdapter.Lora().WriteTo(Path.Combine(allowed, "y")), replace: false, TestContext.Current.CancellationToken);
        Assert.Equal(["y"], store.Registry.List().Select(r => r.Name));
    }
}
