using System.Formats.Tar;
using System.IO.Compression;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterServe.Modeling;

namespace AdapterServe.Tests.AdapterStore;

/// <summary>
/// The corpus of bad adapters and bad uploads, built here, sent through the HTTP endpoints: each is refused with a
/// 4xx whose OpenAI-shaped error names the problem, and the data directory is byte-for-byte what it was before.
/// </summary>
public class AdapterUploadCorpusTests : IDisposable
{
    private readonly TempFolder _temp = new();
    public void Dispose() => _temp.Dispose();

    private sealed record Case(HttpStatusCode Status, string Code, string Mentions, Func<AdapterApiHost, Task<HttpResponseMessage>> Send);

    private static (string, string?, byte[])[] Loose(TestAdapter a) => a.Files().Select(f => (f.Name, (string?)f.Name, f.Bytes)).ToArray();
    private static (string, string?, byte[])[] Archive(byte[] bytes, string fileName = "adapter.zip") => [("file", fileName, bytes)];
    private static TestAdapter Good() => TestAdapter.Lora();

    private static TestAdapter WithConfig(string field, JsonNode value)
    {
        var a = Good();
        a.Config[field] = value;
        return a;
    }

    private static byte[] Truncated()
    {
        var bytes = Good().SafetensorsBytes();
        return bytes[..(bytes.Length / 2)];
    }

    /// <summary>A hand-built file whose header claims 128 bytes of data while 64 follow.</summary>
    private static byte[] LyingHeader()
    {
        string q = "base_model.model.model.layers.0.self_attn.q_proj";
        string header = "{\"" + q + ".lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[2,8],\"data_offsets\":[0,64]},"
            + "\"" + q + ".lora_B.weight\":{\"dtype\":\"F32\",\"shape\":[8,2],\"data_offsets\":[64,128]}}";
        var h = Encoding.UTF8.GetBytes(header);
        var length = BitConverter.GetBytes((ulong)h.Length);
        return [.. length, .. h, .. new byte[64]];
    }

    private static readonly Dictionary<string, Case> Cases = new()
    {
        ["truncated_safetensors"] = new(HttpStatusCode.BadRequest, "invalid_safetensors", "adapter_model.safetensors",
            h => h.UploadAsync("bad", [("adapter_config.json", "adapter_config.json", Good().ConfigBytes()), ("adapter_model.safetensors", "adapter_model.safetensors", Truncated())])),
        ["header_lies_about_sizes"] = new(HttpStatusCode.BadRequest, "invalid_safetensors", "adapter_model.safetensors",
            h => h.UploadAsync("bad", [("adapter_config.json", "adapter_config.json", Good().ConfigBytes()), ("adapter_model.safetensors", "adapter_model.safetensors", LyingHeader())])),
        ["wrong_shape_for_base"] = new(HttpStatusCode.BadRequest, "shape_mismatch", "lora_A.weight' has shape [2, 7]",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("wrong_shape")))),
        ["unknown_target_module"] = new(HttpStatusCode.BadRequest, "unknown_target_module", "unknown module 'model.layers.0.self_attn.qkv_proj'",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("unknown_module")))),
        ["layer_out_of_range"] = new(HttpStatusCode.BadRequest, "layer_out_of_range", "layer 2, but the base model has 2 layers",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("layer_out_of_range")))),
        ["nan_weights"] = new(HttpStatusCode.BadRequest, "non_finite_weights", "layers.1.self_attn.v_proj.lora_B.weight' holds NaN",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("nan")))),
        ["inf_weights"] = new(HttpStatusCode.BadRequest, "non_finite_weights", "layers.0.self_attn.q_proj.lora_A.weight' holds Inf",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("inf")))),
        ["dtype_i32"] = new(HttpStatusCode.BadRequest, "unsupported_dtype", "has dtype I32",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("i32")))),
        ["dtype_f64"] = new(HttpStatusCode.BadRequest, "unsupported_dtype", "has dtype F64",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("f64")))),
        ["rank_mismatch_a_b"] = new(HttpStatusCode.BadRequest, "rank_mismatch", "has rank 3 but lora_A has rank 2",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("rank_mismatch")))),
        ["missing_lora_b"] = new(HttpStatusCode.BadRequest, "missing_tensor", "q_proj.lora_B.weight' is missing",
            h => h.UploadAsync("bad", Loose(BadAdapters.Tensors("missing_b")))),
        ["pissa"] = new(HttpStatusCode.BadRequest, "unsupported_adapter_feature", "init_lora_weights 'pissa'",
            h => h.UploadAsync("bad", Loose(WithConfig("init_lora_weights", "pissa")))),
        ["modules_to_save"] = new(HttpStatusCode.BadRequest, "unsupported_adapter_feature", "modules_to_save",
            h => h.UploadAsync("bad", Loose(WithConfig("modules_to_save", new JsonArray("lm_head", "embed_tokens"))))),
        ["layer_replication"] = new(HttpStatusCode.BadRequest, "unsupported_adapter_feature", "layer_replication",
            h => h.UploadAsync("bad", Loose(WithConfig("layer_replication", new JsonArray(new JsonArray(0, 2)))))),
        ["config_not_json"] = new(HttpStatusCode.BadRequest, "invalid_adapter_config", "adapter_config.json is not valid JSON",
            h => h.UploadAsync("bad", [("adapter_config.json", "adapter_config.json", "{\"peft_type\": "u8.ToArray()), ("adapter_model.safetensors", "adapter_model.safetensors", Good().SafetensorsBytes())])),
        ["missing_adapter_config"] = new(HttpStatusCode.BadRequest, "missing_adapter_config", "adapter_config.json is missing",
            h => h.UploadAsync("bad", [("adapter_model.safetensors", "adapter_model.safetensors", Good().SafetensorsBytes())])),
        ["missing_safetensors"] = new(HttpStatusCode.BadRequest, "missing_adapter_weights", "adapter_model.safetensors is missing",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([("adapter/adapter_config.json", Good().ConfigBytes())])))),
        ["zip_slip"] = new(HttpStatusCode.BadRequest, "archive_path_escape", "'../evil/adapter_config.json' contains '..'",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([.. Good().Files(), ("../evil/adapter_config.json", Good().ConfigBytes())])))),
        ["zip_absolute_path"] = new(HttpStatusCode.BadRequest, "archive_path_escape", "'/tmp/adapter_config.json' has an absolute path",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([("/tmp/adapter_config.json", Good().ConfigBytes())])))),
        ["zip_symlink"] = new(HttpStatusCode.BadRequest, "archive_link", "'adapter_model.safetensors' is a link",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([("adapter_config.json", Good().ConfigBytes()), ("adapter_model.safetensors", "/etc/passwd"u8.ToArray())],
                e => { if (e.FullName == "adapter_model.safetensors") e.ExternalAttributes = unchecked((int)(0xA1FFu << 16)); })))),
        ["tar_symlink"] = new(HttpStatusCode.BadRequest, "archive_link", "'a/adapter_model.safetensors' is a link",
            h => h.UploadAsync("bad", Archive(TestArchives.TarGz([TestArchives.File("a/adapter_config.json", Good().ConfigBytes()),
                TestArchives.Link("a/adapter_model.safetensors", "/etc/passwd")]), "adapter.tar.gz"))),
        ["tar_hardlink"] = new(HttpStatusCode.BadRequest, "archive_link", "'adapter_model.safetensors' is a link",
            h => h.UploadAsync("bad", Archive(TestArchives.TarGz([TestArchives.File("adapter_config.json", Good().ConfigBytes()),
                TestArchives.Link("adapter_model.safetensors", "../../outside", TarEntryType.HardLink)]), "adapter.tar.gz"))),
        ["tar_slip"] = new(HttpStatusCode.BadRequest, "archive_path_escape", "contains '..'",
            h => h.UploadAsync("bad", Archive(TestArchives.TarGz([TestArchives.File("x/../../adapter_config.json", Good().ConfigBytes())]), "adapter.tar.gz"))),
        ["too_many_archive_entries"] = new(HttpStatusCode.BadRequest, "archive_too_many_entries", "at most 8",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([.. Good().Files(), .. Enumerable.Range(0, 10).Select(i => ($"readme{i}.md", new byte[] { 1 }))])))),
        ["archive_expands_too_far"] = new(HttpStatusCode.RequestEntityTooLarge, "archive_too_large", "expands to more than 262144 bytes",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([("adapter_config.json", Good().ConfigBytes()), ("adapter_model.safetensors", new byte[1 << 20])])))),
        ["duplicate_archive_entry"] = new(HttpStatusCode.BadRequest, "archive_duplicate_entry", "'adapter_config.json' appears more than once",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([.. Good().Files(), ("adapter_config.json", Good().ConfigBytes())])))),
        ["not_an_archive"] = new(HttpStatusCode.BadRequest, "unsupported_archive", "neither a .zip nor a .tar.gz",
            h => h.UploadAsync("bad", Archive("just some text"u8.ToArray(), "adapter.rar"))),
        ["two_adapters_in_one_archive"] = new(HttpStatusCode.BadRequest, "invalid_archive_layout", "several adapter folders (a, b)",
            h => h.UploadAsync("bad", Archive(TestArchives.Zip([.. Good().Files().Select(f => ("a/" + f.Name, f.Bytes)), .. Good().Files().Select(f => ("b/" + f.Name, f.Bytes))])))),
        ["oversize_upload"] = new(HttpStatusCode.RequestEntityTooLarge, "upload_too_large", "limit of 65536 bytes",
            h => h.UploadAsync("bad", [("adapter_config.json", "adapter_config.json", Good().ConfigBytes()), ("adapter_model.safetensors", "adapter_model.safetensors", new byte[100_000])])),
        ["bad_name"] = new(HttpStatusCode.BadRequest, "invalid_adapter_name", "contains '/'",
            h => h.UploadAsync("a/b", Loose(Good()))),
        ["dot_dot_name"] = new(HttpStatusCode.BadRequest, "invalid_adapter_name", "'..' is not allowed",
            h => h.UploadAsync("..", Loose(Good()))),
        ["no_name_part"] = new(HttpStatusCode.BadRequest, "missing_name", "no 'name' part",
            h => h.UploadAsync(null, Loose(Good()))),
        ["no_files"] = new(HttpStatusCode.BadRequest, "missing_adapter_files", "no adapter files",
            h => h.UploadAsync("bad", [])),
        ["unexpected_part"] = new(HttpStatusCode.BadRequest, "unexpected_part", "unexpected form part 'weights'",
            h => h.UploadAsync("bad", [("weights", "w.bin", new byte[4])])),
        ["name_taken_without_replace"] = new(HttpStatusCode.Conflict, "adapter_exists", "adapter 'keep' already exists",
            h => h.UploadAsync("keep", Loose(Good()))),
        ["not_multipart"] = new(HttpStatusCode.UnsupportedMediaType, "unsupported_media_type", "multipart/form-data",
            h => h.SendAsync(HttpMethod.Post, "/v1/adapters", new StringContent("{}", Encoding.UTF8, "application/json"))),
        ["no_admin_key"] = new(HttpStatusCode.Unauthorized, "invalid_api_key", "admin key",
            h => h.UploadAsync("new", Loose(Good()), key: null)),
        ["ordinary_api_key"] = new(HttpStatusCode.Forbidden, "admin_key_required", "an admin key is required",
            h => h.UploadAsync("new", Loose(Good()), key: AdapterApiHost.UserKey)),
        ["delete_without_admin_key"] = new(HttpStatusCode.Unauthorized, "invalid_api_key", "admin key",
            h => h.SendAsync(HttpMethod.Delete, "/v1/adapters/keep", key: null)),
        ["vllm_load_missing_path"] = new(HttpStatusCode.BadRequest, "adapter_path_not_found", "'/no/such/dir' does not exist",
            h => h.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter", JsonContent("""{"lora_name":"bad","lora_path":"/no/such/dir"}"""))),
        ["vllm_load_existing_name"] = new(HttpStatusCode.Conflict, "adapter_exists", "load_inplace",
            h => h.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter", JsonContent("""{"lora_name":"keep","lora_path":"/no/such/dir"}"""))),
        ["vllm_bad_json"] = new(HttpStatusCode.BadRequest, "invalid_json", "not valid JSON",
            h => h.SendAsync(HttpMethod.Post, "/v1/load_lora_adapter", JsonContent("""{"lora_name": """))),
    };

    private static StringContent JsonContent(string json) => new(json, Encoding.UTF8, "application/json");

    public static TheoryData<string> CaseNames() => [.. Cases.Keys];

    [Theory]
    [MemberData(nameof(CaseNames))]
    public async Task Bad_upload_is_refused_naming_the_problem_and_leaves_the_store_unchanged(string caseName)
    {
        var c = Cases[caseName];
        await using var host = await AdapterApiHost.StartAsync(_temp.Sub("data"));
        using (var created = await host.UploadAsync("keep", Good()))
            Assert.True(created.StatusCode == HttpStatusCode.Created, await created.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
        string before = TreeListing.Of(host.DataDirectory);

        using var response = await c.Send(host);

        string body = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
        Assert.True(c.Status == response.StatusCode, $"{caseName}: expected {(int)c.Status}, got {(int)response.StatusCode}: {body}");
        var error = JsonNode.Parse(body)!["error"]!.AsObject();
        Assert.Equal(["message", "type", "param", "code"], error.Select(p => p.Key));
        Assert.Equal(c.Code, (string?)error["code"]);
        Assert.Contains(c.Mentions, (string)error["message"]!);
        Assert.Equal(response.StatusCode == HttpStatusCode.Forbidden ? "permission_error" : "invalid_request_error", (string?)error["type"]);
        Assert.Equal(before, TreeListing.Of(host.DataDirectory));
        Assert.Equal(["keep"], await Names(host));
    }

    [Fact]
    public void Corpus_has_at_least_fifteen_bad_adapters()
    {
        Assert.True(Cases.Count >= 15);
    }

    private static async Task<string[]> Names(AdapterApiHost host)
    {
        using var response = await host.SendAsync(HttpMethod.Get, "/v1/adapters", key: null);
        var list = JsonNode.Parse(await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken))!;
        return list["data"]!.AsArray().Select(a => (string)a!["name"]!).ToArray();
    }
}
