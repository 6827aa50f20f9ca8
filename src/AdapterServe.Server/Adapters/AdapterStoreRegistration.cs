using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Adapters;

public static class AdapterStoreRegistration
{
    /// <summary>Top-level configuration key filled by the command-line flag <c>--admin-key KEY</c>.</summary>
    public const string AdminKeyFlag = "admin-key";

    /// <summary>The server's data folder (<c>--data-dir</c>); unset: the per-user default (<see cref="AdapterStoreOptions.DefaultDataRoot"/>).</summary>
    public const string DataDirKey = "Server:DataDir";

    /// <summary>Folders path registration may read (<c>--allowed-adapter-paths DIR[,DIR…]</c>); a comma-separated string or an array.</summary>
    public const string AllowedAdapterPathsKey = "Server:AllowedAdapterPaths";

    /// <summary>
    /// Registers the adapter store (options from the <c>Adapters</c> section plus <c>--admin-key</c>, <c>--data-dir</c> and
    /// <c>--allowed-adapter-paths</c>), its registry,
    /// and a hosted service that opens the store at start and deletes replaced versions once unused. Needs an
    /// <see cref="IAdapterResidency"/> and the base <see cref="ModelConfig"/> in the container (or
    /// <paramref name="baseModel"/> to find it).
    /// </summary>
    public static IServiceCollection AddAdapterStore(this IServiceCollection services, IConfiguration configuration,
        Func<IServiceProvider, ModelConfig>? baseModel = null)
    {
        services.AddOptions<AdapterStoreOptions>()
            .Bind(configuration.GetSection(AdapterStoreOptions.SectionName))
            .PostConfigure(o =>
            {
                if (configuration[AdminKeyFlag] is { Length: > 0 } key) o.AdminKeys = [.. o.AdminKeys, key];
                // Server:DataDir (--data-dir, ADAPTERSERVE_Server__DataDir) is the data root; each base model's store is a folder in it.
                if (configuration[DataDirKey] is { } root) o.DataRoot = root;
                var allowed = configuration.GetSection(AllowedAdapterPathsKey);
                string?[] paths = allowed.Value is { } single ? [single] : [.. allowed.GetChildren().Select(c => c.Value)];
                o.AllowedAdapterPaths = [.. o.AllowedAdapterPaths, .. paths.OfType<string>()];
            })
            .ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<AdapterStoreOptions>, AdapterStoreOptionsValidation>());
        services.TryAddSingleton<AdapterRegistry>();
        services.TryAddSingleton(sp => AdapterKinds.BuiltIn.With(sp.GetServices<IAdapterKindHandler>()));   // plus AddAdapterKind<T>()
        services.TryAddSingleton(sp => new AdapterStore(
            sp.GetRequiredService<IOptions<AdapterStoreOptions>>().Value,
            baseModel?.Invoke(sp) ?? sp.GetRequiredService<ModelConfig>(),
            sp.GetRequiredService<IAdapterResidency>(),
            sp.GetRequiredService<AdapterRegistry>(),
            sp.GetService<ILogger<AdapterStore>>(),
            sp.GetService<TimeProvider>(),
            sp.GetService<IGenerationEngine>()?.Model.Id,
            sp.GetRequiredService<AdapterKinds>()));
        services.TryAddSingleton(sp =>
        {
            // The mixture kinds report into the process's accounting (kind handlers are shared, like Prometheus' registry).
            var usage = ExpertUsage.Shared;
            if (configuration.GetValue<int?>(AdapterServingRegistration.LoadBalanceWindowKey) is { } window)
            {
                if (window < 1) throw new OptionsValidationException(AdapterServingRegistration.LoadBalanceWindowKey, typeof(int), [$"{AdapterServingRegistration.LoadBalanceWindowKey} must be at least 1 step, got {window}"]);
                usage.LoadBalanceWindowSteps = window;
            }
            sp.GetRequiredService<AdapterRegistry>().Changed += change =>
            {
                if (change.Current is null) usage.Forget(change.Name);   // deleted or unloaded: its counts go from the JSON view
            };
            return usage;
        });
        services.AddHostedService<AdapterStoreHost>();
        return services;
    }

    private sealed class AdapterStoreOptionsValidation : IValidateOptions<AdapterStoreOptions>
    {
        public ValidateOptionsResult Validate(string? name, AdapterStoreOptions options) =>
            options.Problems() is { Count: > 0 } problems ? ValidateOptionsResult.Fail(problems) : ValidateOptionsResult.Success;
    }
}

/// <summary>Opens the store when the host starts (stale staging removed, stored adapters listed) and collects replaced versions.</summary>
internal sealed class AdapterStoreHost(AdapterStore store, ILogger<AdapterStoreHost> logger) : BackgroundService
{
    private static readonly TimeSpan Period = TimeSpan.FromSeconds(5);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Period);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    int removed = store.CollectRetiredVersions();
                    if (removed > 0) logger.LogInformation("Deleted {Count} replaced adapter version(s)", removed);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    logger.LogWarning(e, "Could not delete replaced adapter versions");
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested) { }
    }
}
