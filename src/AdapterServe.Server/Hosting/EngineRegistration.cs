using AdapterServe.Engine;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

public static class EngineRegistration
{
    /// <summary>
    /// The engine as a singleton <see cref="IGenerationEngine"/>, created at start (the model loads on its own thread
    /// while <c>/health</c> answers 503) and disposed with the container on shutdown.
    /// </summary>
    public static IServiceCollection AddGenerationEngine(this IServiceCollection services)
    {
        // TODO-MERGE: GenerationEngine.Start(options, loggerFactory) once the engine is on main.
        services.AddSingleton<IGenerationEngine>(sp => throw new InvalidOperationException("engine not merged yet: " + sp.GetRequiredService<IOptions<EngineOptions>>().Value.ModelPath));
        services.AddHostedService<EngineStartup>();
        return services;
    }

    /// <summary>Resolves the engine when the host starts, so loading begins before the first request.</summary>
    private sealed class EngineStartup(IServiceProvider services) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            services.GetRequiredService<IGenerationEngine>();
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
