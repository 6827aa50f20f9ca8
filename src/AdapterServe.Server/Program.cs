using AdapterServe.Server.Adapters;
using AdapterServe.Server.Dashboard;
using AdapterServe.Server.Hosting;
using Microsoft.Extensions.Options;

try
{
    string[] flags = CommandLineFlags.Translate(args);
    var builder = WebApplication.CreateBuilder(flags);
    builder.AddServerConfiguration(flags);
    builder.AddServerLogging();
    builder.Services.AddGracefulShutdown();
    builder.Services.AddGenerationEngine();
    builder.Services.AddAdapterServing(builder.Configuration);
    builder.Services.AddOpenAIApi();
    builder.Services.AddServerMetrics();
    builder.Services.AddApiDocs();

    var app = builder.Build();
    app.UseServerPipeline();
    app.MapHealth();
    app.MapServerMetrics();
    app.MapDashboard();
    app.MapOpenAIApi();
    app.MapAdapterEndpoints();
    app.MapApiDocs();
    app.Run();
    return 0;
}
catch (Exception e) when (e is CommandLineException or OptionsValidationException)
{
    Console.Error.WriteLine($"adapterserve: {e.Message}");
    return 2;
}

public partial class Program;
