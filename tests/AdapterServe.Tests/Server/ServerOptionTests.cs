using System.Reflection;
using AdapterServe.Engine;
using AdapterServe.Server.Hosting;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Server;

/// <summary>The options added for limits, and the option checks folded into one style: each failure stops the start cleanly.</summary>
public sealed class ServerOptionTests
{
    private static (int ExitCode, string Stderr) RunProgram(params string[] args)
    {
        var main = typeof(Program).GetMethod("<Main>$", BindingFlags.NonPublic | BindingFlags.Static)!;
        var stderr = new StringWriter();
        var previous = Console.Error;
        Console.SetError(stderr);
        try
        {
            return ((int)main.Invoke(null, [args])!, stderr.ToString());
        }
        finally
        {
            Console.SetError(previous);
        }
    }

    [Theory]
    [InlineData("--Adapters:Residency:MaxDeviceAdapters=0", "Adapters:Residency:MaxDeviceAdapters")]
    [InlineData("--Adapters:Residency:MaxHostBytes=-1", "Adapters:Residency:MaxHostBytes")]
    [InlineData("--rate-limit-rpm=-1", "--rate-limit-rpm")]
    [InlineData("--max-prompt-bytes=0", "--max-prompt-bytes")]
    [InlineData("--Server:Limits:MaxN=0", "Server:Limits:MaxN")]
    public void A_bad_option_exits_with_2_and_a_message_naming_the_setting(string arg, string setting)
    {
        var (exitCode, stderr) = RunProgram(arg, "--port=0", "--log-format=json");
        Assert.Equal(2, exitCode);
        Assert.StartsWith("adapterserve: ", stderr);
        Assert.Contains(setting, stderr);
        Assert.DoesNotContain("   at ", stderr);     // a message, not a stack trace
    }

    [Theory]
    [InlineData("--rate-limit-rpm=-5", "--rate-limit-rpm")]
    [InlineData("--rate-limit-burst=-1", "--rate-limit-burst")]
    [InlineData("--max-prompt-bytes=-1", "--max-prompt-bytes")]
    public async Task Invalid_limit_settings_stop_the_start_naming_the_flag(string arg, string flag)
    {
        string[] flags = CommandLineFlags.Translate([arg, "--port=0"]);
        var builder = WebApplication.CreateBuilder(flags);
        builder.AddServerConfiguration(flags);
        var e = await Assert.ThrowsAsync<OptionsValidationException>(async () =>
        {
            await using var app = builder.Build();
            await app.StartAsync(TestContext.Current.CancellationToken);
        });
        Assert.Contains(flag, e.Message);
    }

    [Fact]
    public void The_new_flags_become_configuration_paths()
    {
        Assert.Equal(
            ["--Server:RateLimit:RequestsPerMinute=60", "--Server:RateLimit:Burst=10", "--Server:Limits:MaxPromptBytes=4096"],
            CommandLineFlags.Translate(["--rate-limit-rpm", "60", "--rate-limit-burst=10", "--max-prompt-bytes", "4096"]));
    }

    public static TheoryData<string, string, ScalarType?> Spellings() => new()
    {
        // device, dtype, the compute dtype (null = refused)
        { "cpu", "float32", ScalarType.Float32 },
        { "cpu", "fp32", ScalarType.Float32 },
        { "CPU", "F32", ScalarType.Float32 },
        { "cpu", "bfloat16", ScalarType.BFloat16 },
        { "cpu", "bf16", ScalarType.BFloat16 },
        { "cpu", "float16", null },
        { "cpu", "fp16", null },
        { "cpu", "int4", null },
        { "cpu", "", null },
    };

    /// <summary>The option check (start-up) and the engine's model load read --device/--dtype alike: what one accepts, the other loads.</summary>
    [Theory]
    [MemberData(nameof(Spellings))]
    public void The_option_check_and_the_engine_agree_on_every_dtype_spelling(string device, string dtype, ScalarType? expected)
    {
        var options = new EngineOptions { Device = device, Dtype = dtype };
        var check = new EngineOptionsValidator().Validate(null, options);
        if (expected is ScalarType scalar)
        {
            Assert.True(check.Succeeded, check.FailureMessage);
            Assert.Equal(scalar, GenerationEngine.ParseDtype(dtype, GenerationEngine.ParseDevice(device)));
        }
        else
        {
            Assert.True(check.Failed);
            Assert.Contains("--dtype", check.FailureMessage);
            Assert.Throws<ArgumentException>(() => GenerationEngine.ParseDtype(dtype, GenerationEngine.ParseDevice(device)));
        }
    }

    [Theory]
    [InlineData("cuda", true)]
    [InlineData("cuda:1", true)]
    [InlineData("CUDA:0", true)]
    [InlineData("cuda:", false)]
    [InlineData("cuda:-1", false)]
    [InlineData("tpu", false)]
    [InlineData("", false)]
    public void Device_names_are_read_one_way(string device, bool valid)
    {
        Assert.Equal(valid, ComputeTarget.DeviceProblem(device) is null);
        var check = new EngineOptionsValidator().Validate(null, new EngineOptions { Device = device, Dtype = "float32" });
        Assert.Equal(valid, check.Succeeded);
        if (!valid) Assert.Throws<ArgumentException>(() => GenerationEngine.ParseDevice(device));
    }

    [Theory]
    [InlineData("float32", "cpu", ScalarType.Float32)]
    [InlineData("bfloat16", "cpu", ScalarType.Float32)]        // tiny bfloat16 GEMMs are slow on the CPU: adapters stay float32
    [InlineData("bfloat16", "cuda", ScalarType.BFloat16)]
    [InlineData("float16", "cuda:1", ScalarType.Float16)]
    public void Adapters_are_stored_in_the_model_dtype_except_bfloat16_on_the_cpu(string dtype, string device, ScalarType expected)
    {
        var d = device == "cpu" ? CPU : new Device(DeviceType.CUDA, device.EndsWith(":1", StringComparison.Ordinal) ? 1 : 0);
        var model = dtype switch { "float32" => ScalarType.Float32, "bfloat16" => ScalarType.BFloat16, _ => ScalarType.Float16 };
        Assert.Equal(expected, ComputeTarget.AdapterDtype(model, d));
    }

    [Fact]
    public void Bearer_keys_admit_exactly_the_configured_keys_whatever_their_length()
    {
        var keys = new BearerKeys(["sk-short", "sk-a-much-longer-admin-key-0123456789"]);
        Assert.True(keys.Contains("sk-short"));
        Assert.True(keys.Contains("sk-a-much-longer-admin-key-0123456789"));
        foreach (var wrong in new[] { "", "sk-shor", "sk-short ", "sk-shortx", "SK-SHORT", "sk-a-much-longer-admin-key-012345678" })
            Assert.False(keys.Contains(wrong), wrong);
        Assert.True(new BearerKeys([]).IsEmpty);
    }

    [Theory]
    [InlineData("Bearer sk-1", "sk-1")]
    [InlineData("bearer   sk-1  ", "sk-1")]
    [InlineData("Bearer ", null)]
    [InlineData("Basic sk-1", null)]
    [InlineData("", null)]
    public void The_presented_key_is_read_from_the_bearer_header(string header, string? expected)
    {
        var http = new DefaultHttpContext();
        if (header.Length > 0) http.Request.Headers.Authorization = header;
        Assert.Equal(expected, BearerKeys.Presented(http.Request));
    }
}
