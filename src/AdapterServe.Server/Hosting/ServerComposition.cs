using System.Net;
using AdapterServe.Engine;
using AdapterServe.Server.Generation;
using AdapterServe.Server.Observability;
using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.Options;
using Prometheus;
using Serilog;
using Serilog.Events;
using Serilog.Formatting.Compact;

namespace AdapterServe.Server.Hosting;

/// <summary>The server's parts, as the <c>AddXxx()</c>/<c>MapXxx()</c> steps <c>Program.cs</c> strings together.</summary>
public static class ServerComposition
{
    public const string EnvironmentPrefix = "ADAPTERSERVE_";
    public const string EngineSection = "Engine";

    /// <summary>
    /// Configuration from appsettings.json, then <c>ADAPTERSERVE_</c> environment variables (<c>ADAPTERSERVE_Engine__MaxBatch</c>),
    /// then the flags (<see cref="CommandLineFlags"/>); <see cref="ServerOptions"/> and <see cref="EngineOptions"/> bound and
    /// validated at start; Kestrel listening on <c>--host</c>:<c>--port</c>.
    /// </summary>
    public static WebApplicationBuilder AddServerConfiguration(this WebApplicationBuilder builder, string[] translatedArgs)
    {
        builder.Configuration.AddEnvironmentVariables(EnvironmentPrefix);
        builder.Configuration.AddCommandLine(translatedArgs);     // again, so flags beat the prefixed variables
        builder.Services.AddSingleton<IValidateOptions<ServerOptions>, ServerOptionsValidator>();
        builder.Services.AddSingleton<IValidateOptions<EngineOptions>, EngineOptionsValidator>();
        builder.Services.AddOptions<ServerOptions>().Bind(builder.Configuration.GetSection(ServerOptions.Section)).ValidateOnStart();
        builder.Services.AddOptions<EngineOptions>().Bind(builder.Configuration.GetSection(EngineSection)).ValidateOnStart();
        builder.Services.AddRequestLimits(builder.Configuration);
        builder.Services.AddRequestRateLimits(builder.Configuration);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            var server = kestrel.ApplicationServices.GetRequiredService<IOptions<ServerOptions>>().Value;
            var address = server.Host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(server.Host);
            if (server.Host == "localhost" && server.Port != 0) kestrel.ListenLocalhost(server.Port);
            else kestrel.Listen(address, server.Port);
        });
        return builder;
    }

    /// <summary>Serilog to the console: readable text, or compact JSON with <c>--log-format json</c>; framework chatter at Warning.</summary>
    public static WebApplicationBuilder AddServerLogging(this WebApplicationBuilder builder)
    {
        builder.Logging.ClearProviders();
        builder.Services.AddSerilog((services, logger) =>
        {
            var server = services.GetRequiredService<IOptions<ServerOptions>>().Value;
            logger.MinimumLevel.Information()
                .MinimumLevel.Override("Microsoft.AspNetCore", LogEventLevel.Warning)
                .ReadFrom.Configuration(services.GetRequiredService<IConfiguration>())
                .Enrich.FromLogContext();
            if (server.LogFormat == "json") logger.WriteTo.Console(new CompactJsonFormatter());
            else logger.WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss} {Level:u3}] {SourceContext}: {Message:lj}{NewLine}{Exception}");
        }, preserveStaticLogger: true, writeToProviders: true);
        return builder;
    }

    /// <summary>The OpenAI wire format (<see cref="ApiJson"/>) for the responses the endpoints write.</summary>
    public static IServiceCollection AddOpenAIApi(this IServiceCollection services)
    {
        services.ConfigureHttpJsonOptions(o => ApiJson.Configure(o.SerializerOptions));
        return services;
    }

    /// <summary>Quiet default metrics, and the vLLM-named gateway series (<see cref="GatewayMetrics"/>).</summary>
    public static IServiceCollection AddServerMetrics(this IServiceCollection services)
    {
        ServerMetrics.SuppressDefaultNoise();
        services.AddSingleton(sp => new GatewayMetrics(sp.GetRequiredService<IGenerationEngine>(), sp.GetRequiredService<IOptions<AdapterServe.Adapters.ResidencyOptions>>()));
        return services;
    }

    /// <summary>
    /// Request log (outermost, sees the final status), OpenAI-shaped bodies for framework errors, exception → error mapping,
    /// the shutdown drain's gate on generation requests, and the per-client rate limit.
    /// </summary>
    public static WebApplication UseServerPipeline(this WebApplication app)
    {
        app.UseMiddleware<RequestLog>();
        app.UseStatusCodePages(ErrorResponses.StatusCodePage);
        app.UseMiddleware<ErrorResponses>();
        app.UseMiddleware<DrainGate>();
        app.UseRequestRateLimits();
        return app;
    }

    /// <summary><c>/v1/*</c> behind the API keys, one group per endpoint family.</summary>
    public static WebApplication MapOpenAIApi(this WebApplication app)
    {
        var v1 = app.MapGroup("/v1").RequireApiKey();
        v1.MapCompletions();
        v1.MapChatCompletions();
        v1.MapModels();
        return app;
    }

    /// <summary>
    /// <c>/metrics</c> in the Prometheus text format, open like <c>/health</c>: prometheus-net's <c>adapterserve_*</c> and
    /// process series, then, with <c>--gateway-metrics</c>, the vLLM-named gateway series (<see cref="GatewayMetrics"/>).
    /// </summary>
    public static WebApplication MapServerMetrics(this WebApplication app)
    {
        bool gatewaySeries = app.Services.GetRequiredService<IOptions<ServerOptions>>().Value.GatewayMetrics;
        app.MapGet("/metrics", async (HttpContext http, GatewayMetrics gateway) =>
        {
            http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await Metrics.DefaultRegistry.CollectAndExportAsTextAsync(http.Response.Body, http.RequestAborted);
            if (gatewaySeries) await http.Response.WriteAsync(gateway.Text(), http.RequestAborted);
        }).WithTags("Operations").WithSummary("Prometheus metrics (adapterserve_*, and vllm:* for inference gateways)").ExcludeFromDescription();
        return app;
    }
}
