using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using AdapterServe.Adapters.Store;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>
/// vLLM's <c>load_lora_adapter</c> under hostile input (issue 8 parts 6 and 9): confinement to --allowed-adapter-paths,
/// symbolic links, FIFOs, NUL characters, error messages that must not quote files the caller could not read.
/// </summary>
public sealed class PathRegistrationTests : IDisposable
{
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task<AdapterApiHost> HostAsync(params string[] allowed) => AdapterApiHost.StartAsync(_temp.Sub("data"),
        settings: allowed.Length == 0 ? null : new Dictionary<string, string?> { ["Server:AllowedAdapterPaths"] = string.Join(",", allowed) });

    private static async Task<(HttpStatusCode Status, string Body)> LoadAsync(AdapterApiHost host, string name, string path)
    {
        using var response = await host.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter",
            new StringContent(new JsonObject { ["lora_name"] = name, ["lora_path"] = path }.ToJsonString(), Encoding.UTF8, "application/json"));
        return (response.StatusCode, await response.Content.ReadAsStringAsync(Ct));
    }

    private static JsonObject Error(string body) => JsonNode.Parse(body)!["error"]!.AsObject();

    private static async Task<string[]> NamesAsync(AdapterApiHost host)
    {
        using var response = await host.SendAsync(HttpMethod.Get, "/v1/adapters", key: null);
        return JsonNode.Parse(await response.Content.ReadAsStringAsync(Ct))!["data"]!.AsArray().Select(a => (string)a!["name"]!).ToArray();
    }

    private static void MakeFifo(string path)
    {
        using var mkfifo = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
    }

    [Fact]
    public async Task Path_outside_the_allowed_folders_is_403_naming_the_option_even_through_a_symlinked_folder()
    {
        string allowed = Directory.CreateDirectory(_temp.Sub("allowed")).FullName;
        string outside = TestAdapter.Lora(seed: 1).WriteTo(_temp.Sub("outside/adapter"));
        string inside = TestAdapter.Lora(seed: 2).WriteTo(Path.Combine(allowed, "good"));
        Directory.CreateSymbolicLink(Path.Combine(allowed, "sneaky"), outside);
        await using var host = await HostAsync(allowed);

        foreach (var path in new[] { outside, Path.Combine(allowed, "sneaky"), Path.Combine(allowed, "..", "outside", "adapter") })
        {
            var (status, body) = await LoadAsync(host, "x", path);
            Assert.True(status == HttpStatusCode.Forbidden, $"{path}: {(int)status} {body}");
            Assert.Equal("adapter_path_not_allowed", (string?)Error(body)["code"]);
            Assert.Equal("lora_path", (string?)Error(body)["param"]);
            Assert.Contains("--allowed-adapter-paths", (string)Error(body)["message"]!);
        }
        Assert.Equal(HttpStatusCode.OK, (await LoadAsync(host, "good", inside)).Status);
        Assert.Equal(["good"], await NamesAsync(host));
    }

    [Fact]
    public async Task Nul_character_in_lora_path_is_400_not_500()
    {
        await using var host = await HostAsync();
        var (status, body) = await LoadAsync(host, "x", "/tmp/a\0b");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_lora_path", (string?)Error(body)["code"]);
        Assert.Equal("lora_path", (string?)Error(body)["param"]);
    }

    [Fact]
    public async Task Weights_linked_to_a_file_outside_the_folder_are_refused_without_quoting_its_bytes()
    {
        // A stand-in for /etc/shadow: the first 8 bytes read as a little-endian length would be 3619251681095544690.
        string secret = _temp.Sub("secret");
        File.WriteAllText(secret, "root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n");
        string folder = Directory.CreateDirectory(_temp.Sub("adapter")).FullName;
        File.WriteAllBytes(Path.Combine(folder, "adapter_config.json"), TestAdapter.Lora().ConfigBytes());
        File.CreateSymbolicLink(Path.Combine(folder, "adapter_model.safetensors"), secret);
        await using var host = await HostAsync();

        var (status, body) = await LoadAsync(host, "leak", folder);

        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("adapter_path_link", (string?)Error(body)["code"]);
        ulong asLength = BitConverter.ToUInt64(File.ReadAllBytes(secret), 0);
        Assert.DoesNotContain(asLength.ToString(System.Globalization.CultureInfo.InvariantCulture), body);
        Assert.DoesNotContain("root:", body);
        Assert.Empty(await NamesAsync(host));
    }

    [Fact]
    public async Task Invalid_files_read_from_a_path_are_refused_with_their_code_but_not_their_contents()
    {
        string folder = Directory.CreateDirectory(_temp.Sub("adapter")).FullName;
        File.WriteAllBytes(Path.Combine(folder, "adapter_config.json"), TestAdapter.Lora().ConfigBytes());
        File.WriteAllText(Path.Combine(folder, "adapter_model.safetensors"), "SECRET-LINE-of-a-private-file\n");
        string badJson = Directory.CreateDirectory(_temp.Sub("bad-json")).FullName;
        File.WriteAllText(Path.Combine(badJson, "adapter_config.json"), "{\"r\": 8, \"secret_token\": \"hunter2\" oops");
        File.WriteAllBytes(Path.Combine(badJson, "adapter_model.safetensors"), TestAdapter.Lora().SafetensorsBytes());
        await using var host = await HostAsync();

        var (status, body) = await LoadAsync(host, "weights", folder);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_safetensors", (string?)Error(body)["code"]);
        ulong asLength = BitConverter.ToUInt64(Encoding.ASCII.GetBytes("SECRET-L"), 0);
        Assert.DoesNotContain(asLength.ToString(System.Globalization.CultureInfo.InvariantCulture), body);
        Assert.Contains("server log", (string)Error(body)["message"]!);

        (status, body) = await LoadAsync(host, "config", badJson);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.DoesNotContain("hunter2", body);
        Assert.DoesNotContain("LineNumber", body);
        Assert.DoesNotContain("BytePosition", body);
        Assert.Empty(await NamesAsync(host));
    }

    [Fact]
    public async Task Fifo_named_like_the_weights_is_refused_without_being_opened()
    {
        string folder = Directory.CreateDirectory(_temp.Sub("adapter")).FullName;
        File.WriteAllBytes(Path.Combine(folder, "adapter_config.json"), TestAdapter.Lora().ConfigBytes());
        MakeFifo(Path.Combine(folder, "adapter_model.safetensors"));
        string fifoArchive = _temp.Sub("adapter.zip");
        MakeFifo(fifoArchive);
        await using var host = await HostAsync();

        // Opening either FIFO for reading would block until a writer comes (never): the request would hang.
        var (status, body) = await LoadAsync(host, "fifo", folder);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("adapter_path_not_regular", (string?)Error(body)["code"]);
        (status, body) = await LoadAsync(host, "fifo", fifoArchive);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("adapter_path_not_regular", (string?)Error(body)["code"]);
        Assert.Equal(HostFileKind.Other, HostPath.KindOf(fifoArchive));
        Assert.Equal(HostFileKind.Other, HostPath.KindOf("/dev/null"));
    }

    [Fact]
    public async Task Weights_linked_inside_an_allowed_folder_are_followed_like_a_hugging_face_cache()
    {
        string cache = Directory.CreateDirectory(_temp.Sub("hf-cache")).FullName;
        var adapter = TestAdapter.Lora(seed: 7);
        string blobs = Directory.CreateDirectory(Path.Combine(cache, "blobs")).FullName;
        File.WriteAllBytes(Path.Combine(blobs, "aaa"), adapter.ConfigBytes());
        File.WriteAllBytes(Path.Combine(blobs, "bbb"), adapter.SafetensorsBytes());
        string snapshot = Directory.CreateDirectory(Path.Combine(cache, "snapshots", "rev1")).FullName;
        File.CreateSymbolicLink(Path.Combine(snapshot, "adapter_config.json"), "../../blobs/aaa");
        File.CreateSymbolicLink(Path.Combine(snapshot, "adapter_model.safetensors"), "../../blobs/bbb");
        await using var host = await HostAsync(cache);

        var (status, body) = await LoadAsync(host, "cached", snapshot);

        Assert.True(status == HttpStatusCode.OK, body);
        string stored = Path.Combine(host.Services.GetService(typeof(global::AdapterServe.Adapters.Store.AdapterStore)) is global::AdapterServe.Adapters.Store.AdapterStore s ? s.AdaptersDirectory : "", "cached", "v1");
        Assert.Equal(adapter.SafetensorsBytes(), File.ReadAllBytes(Path.Combine(stored, "adapter_model.safetensors")));
        Assert.Null(new FileInfo(Path.Combine(stored, "adapter_model.safetensors")).LinkTarget);
    }

    [Fact]
    public void Resolve_follows_every_link_like_realpath()
    {
        string a = Directory.CreateDirectory(_temp.Sub("a/b")).FullName;
        Directory.CreateSymbolicLink(_temp.Sub("link"), a);                   // link -> a/b
        Directory.CreateSymbolicLink(_temp.Sub("a/b/up"), "..");              // a/b/up -> a
        File.WriteAllText(_temp.Sub("a/file"), "x");

        string real = HostPath.Resolve(_temp.Path);
        Assert.Equal(Path.Combine(real, "a", "file"), HostPath.Resolve(_temp.Sub("link/up/file")));
        // Lexically link/.. would be the temp folder; through the link it is a/.
        Assert.Equal(Path.Combine(real, "a"), HostPath.Resolve(_temp.Sub("link/..")));
        Assert.True(HostPath.IsUnder(Path.Combine(real, "a", "file"), Path.Combine(real, "a")));
        Assert.False(HostPath.IsUnder(Path.Combine(real, "ab"), Path.Combine(real, "a")));
    }

    [Fact]
    public async Task Unload_of_a_busy_adapter_withdraws_it_at_once_and_deletes_it_after_the_running_ones()
    {
        await using var host = await HostAsync();
        using (var created = await host.UploadAsync("busy", TestAdapter.Lora()))
            Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        host.Residency.SetActive("busy", 1);
        var store = (global::AdapterServe.Adapters.Store.AdapterStore)host.Services.GetService(typeof(global::AdapterServe.Adapters.Store.AdapterStore))!;
        string files = Path.Combine(store.AdaptersDirectory, "busy");

        using var unloaded = await host.SendAsync(HttpMethod.Post, "/v1/unload_lora_adapter", new StringContent("""{"lora_name":"busy"}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, unloaded.StatusCode);
        using (var gone = await host.SendAsync(HttpMethod.Get, "/v1/adapters/busy", key: null))
            Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        Assert.True(Directory.Exists(files), "the running sequence still has its files");
        Assert.Equal(0, store.CollectRetiredVersions());

        host.Residency.SetActive("busy", 0);
        Assert.Equal(1, store.CollectRetiredVersions());
        Assert.False(Directory.Exists(files));
    }

    [Fact]
    public async Task Unloaded_adapter_stays_gone_after_a_restart_even_when_its_files_were_not_deleted_yet()
    {
        string data = _temp.Sub("data");
        await using (var host = await HostAsync())
        {
            using (var created = await host.UploadAsync("busy", TestAdapter.Lora()))
                Assert.Equal(HttpStatusCode.Created, created.StatusCode);
            host.Residency.SetActive("busy", 1);
            using var unloaded = await host.SendAsync(HttpMethod.Post, "/v1/unload_lora_adapter", new StringContent("""{"lora_name":"busy"}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.OK, unloaded.StatusCode);
            Assert.True(Directory.Exists(Path.Combine(data, "adapters", "busy", "v1")));
        }                                                                     // stopped before the running sequence ended

        await using var second = await HostAsync();
        Assert.Empty(await NamesAsync(second));
        Assert.False(Directory.Exists(Path.Combine(data, "adapters", "busy")));
    }
}
