using AdapterServe.Tests.AdapterStore;
using AdapterServe.Tests.Server;

namespace AdapterServe.Tests.AdapterHttp;

/// <summary>
/// The admin key set as the README documents it, <c>Server:AdminKey</c> (the environment's <c>ADAPTERSERVE_Server__AdminKey</c>,
/// appsettings.json), without the <c>--admin-key</c> flag: it opens the admin endpoints.
/// </summary>
public sealed class AdminKeyConfigurationTests
{
    private const string ConfiguredKey = "sk-admin-from-configuration";

    [Fact]
    public async Task An_admin_key_set_as_Server_AdminKey_opens_the_admin_endpoints()
    {
        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?>
        {
            ["admin-key"] = null,                 // no --admin-key flag
            ["Server:AdminKey"] = ConfiguredKey,
        });

        var (status, body) = await server.UploadAsync("configured", TinyAdapters.Lora(seed: 811), key: ConfiguredKey);
        Assert.True(status == 201, $"upload with Server:AdminKey: {status} {body?.ToJsonString()}");
        Assert.Equal(200, (await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/configured/pin", ConfiguredKey)).Status);

        // Other keys still may not write; the flag's key is not configured here.
        foreach (var key in new[] { AdapterServer.AdminKey, "sk-admin-from-configuration-", "sk-admin-from-configuratio" })
        {
            (status, body) = await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/configured/unpin", key);
            Assert.Equal(403, status);
            Assert.Equal("admin_key_required", (string?)Http.Error(body)["code"]);
        }
    }

    [Fact]
    public async Task Without_any_admin_key_writes_stay_disabled()
    {
        await using var server = await AdapterServer.StartAsync(new Dictionary<string, string?> { ["admin-key"] = null });
        var (status, body) = await server.SendAdminAsync(HttpMethod.Post, "/v1/adapters/x/pin", ConfiguredKey);
        Assert.Equal(403, status);
        Assert.Equal("admin_key_not_configured", (string?)Http.Error(body)["code"]);
    }
}
