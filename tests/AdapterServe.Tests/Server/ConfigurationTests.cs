using System.Reflection;
using AdapterServe.Engine;
using AdapterServe.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace AdapterServe.Tests.Server;

/// <summary>Flags, environment variables and appsettings, and their validation at start.</summary>
public sealed class ConfigurationTests
{
    [Fact]
    public void Flags_become_configuration_paths_and_api_keys_may_repeat_and_hold_commas()
    {
        var args = CommandLineFlags.Translate([
            "--model", "/m", "--served-model-name=base", "--device", "cpu", "--dtype", "bfloat16", "--host", "0.0.0.0", "--port", "9000",
            "--api-key", "a, b", "--max-batch", "4", "--max-queue", "9", "--max-tokens-per-step", "64", "--max-context", "256",
            "--log-format", "json", "--api-key=c", "--admin-key", "adm", "--data-dir", "/d", "--environment=Development", "--Engine:Dtype=float32",
        ]);
        Assert.Equal([
            "--Engine:ModelPath=/m", "--Engine:ServedModelName=base", "--Engine:Device=cpu", "--Engine:Dtype=bfloat16", "--Server:Host=0.0.0.0",
            "--Server:Port=9000", "--Engine:MaxBatch=4", "--Engine:MaxQueue=9", "--Engine:MaxTokensPerStep=64", "--Engine:MaxContext=256",
            "--Server:LogFormat=json", "--Server:AdminKey=adm", "--admin-key=adm", "--Server:DataDir=/d", "--environment=Development", "--Engine:Dtype=float32",
            "--Server:ApiKeys:0=a", "--Server:ApiKeys:1=b", "--Server:ApiKeys:2=c",
        ], args);
    }

    [Theory]
    [InlineData("--max-batchs", "Unknown flag '--max-batchs'")]
    [InlineData("--port", "'--port' needs a value")]
    [InlineData("--api-key=a,,b", "--api-key holds an empty key")]
    public void Bad_flags_are_refused_naming_the_flag(string arg, string message)
    {
        var e = Assert.Throws<CommandLineException>(() => CommandLineFlags.Translate([arg]));
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void Flags_beat_environment_variables_which_beat_defaults()
    {
        const string adminVariable = "ADAPTERSERVE_Server__AdminKey", dataVariable = "ADAPTERSERVE_Server__DataDir";
        Environment.SetEnvironmentVariable(adminVariable, "from-environment");
        Environment.SetEnvironmentVariable(dataVariable, "/from-environment");
        try
        {
            string[] flags = CommandLineFlags.Translate(["--data-dir", "/from-flag", "--api-key", "a,b", "--api-key", "c", "--max-batch", "4", "--log-format", "json"]);
            var builder = WebApplication.CreateBuilder(flags);
            builder.AddServerConfiguration(flags);
            using var app = builder.Build();
            var server = app.Services.GetRequiredService<IOptions<ServerOptions>>().Value;
            var engine = app.Services.GetRequiredService<IOptions<EngineOptions>>().Value;
            Assert.Equal("/from-flag", server.DataDir);
            Assert.Equal("from-environment", server.AdminKey);
            Assert.Equal(["a", "b", "c"], server.EffectiveApiKeys);
            Assert.Equal("json", server.LogFormat);
            Assert.Equal(4, engine.MaxBatch);
            Assert.Equal("127.0.0.1", server.Host);
            Assert.Equal(8000, server.Port);
            Assert.Equal(256, engine.MaxQueue);
        }
        finally
        {
            Environment.SetEnvironmentVariable(adminVariable, null);
            Environment.SetEnvironmentVariable(dataVariable, null);
        }
    }

    [Theory]
    [InlineData("--max-batch=0", "--max-batch")]
    [InlineData("--max-queue=-1", "--max-queue")]
    [InlineData("--max-tokens-per-step=0", "--max-tokens-per-step")]
    [InlineData("--max-context=-5", "--max-context")]
    [InlineData("--model=/no/such/model/dir", "--model")]
    [InlineData("--device=tpu", "--device")]
    [InlineData("--dtype=float16", "--dtype")]
    [InlineData("--dtype=int4", "--dtype")]
    [InlineData("--served-model-name=a:b", "--served-model-name")]
    [InlineData("--port=70000", "--port")]
    [InlineData("--host=not-a-host", "--host")]
    [InlineData("--log-format=xml", "--log-format")]
    [InlineData("--Server:ApiKeys:0= ", "--api-key")]
    public async Task Invalid_settings_stop_the_start_with_a_message_naming_the_flag(string arg, string flag)
    {
        string[] flags = CommandLineFlags.Translate([arg, "--port=0"]);
        if (arg.StartsWith("--port", StringComparison.Ordinal)) flags = CommandLineFlags.Translate([arg]);
        var builder = WebApplication.CreateBuilder(flags);
        builder.AddServerConfiguration(flags);
        var e = await Assert.ThrowsAsync<OptionsValidationException>(async () =>
        {
            await using var app = builder.Build();     // Kestrel's listen address already reads the server options
            await app.StartAsync(TestContext.Current.CancellationToken);
        });
        Assert.Contains(flag, e.Message);
    }

    [Theory]
    [InlineData("--max-batchs=3", "Unknown flag")]
    [InlineData("--max-batch=0", "--max-batch")]
    public void Program_exits_with_2_and_the_reason_for_a_bad_command_line(string arg, string message)
    {
        var main = typeof(Program).GetMethod("<Main>$", BindingFlags.NonPublic | BindingFlags.Static)!;
        var stderr = new StringWriter();
        var previous = Console.Error;
        Console.SetError(stderr);
        try
        {
            Assert.Equal(2, main.Invoke(null, [new[] { arg, "--port=0", "--log-format=json" }]));
        }
        finally
        {
            Console.SetError(previous);
        }
        Assert.Contains(message, stderr.ToString());
    }
}
