using AdapterServe.Engine;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Hosting;

public static class EngineRegistration
{
    /// <summary>
    /// The engine as a singleton <see cref="IGenerationEngine"/>, created by <see cref="GenerationEngine.Start"/> when the
    /// host starts (the model loads on its own thread while <c>/health</c> answers 503) and disposed with the container
    /// on shutdown. Tests replace the registration with their own engine.
    /// </summary>
    public static IServiceCollection AddGenerationEngine(this IServiceCollection services)
    {
        services.AddSingleton<IGenerationEngine>(sp => GenerationEngine.Start(
            sp.GetRequiredService<IOptions<EngineOptions>>().Value,
            sp.GetRequiredService<ILoggerFactory>(),
            sp.GetService<IAdapterBinder>()));     // registered by the adapter registry when it is wired in; none = base model only
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
