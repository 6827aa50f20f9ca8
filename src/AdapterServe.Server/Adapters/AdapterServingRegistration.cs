using AdapterServe.Adapters;
using AdapterServe.Adapters.Experts;
using AdapterServe.Adapters.Store;
using AdapterServe.Engine;
using AdapterServe.Modeling;
using AdapterServe.Server.Generation;
using AdapterServe.Server.OpenAI;
using Microsoft.Extensions.Options;

namespace AdapterServe.Server.Adapters;

/// <summary>
/// Wires the Adapters room to the engine: the kinds served, the residency cache (device slots behind an LRU), the
/// engine's adapter binder over the registry (through which the engine hands the room its base weights once the model
/// is loaded), the store and its endpoints, and the adapters' entries in <c>/v1/models</c>.
/// </summary>
public static class AdapterServingRegistration
{
    public const string ResidencySection = "Adapters:Residency";
    /// <summary>Steps in the sliding window of <c>adapterserve_expert_load_balance</c> (default <see cref="ExpertUsage.DefaultLoadBalanceWindowSteps"/>).</summary>
    public const string LoadBalanceWindowKey = "Experts:LoadBalanceWindowSteps";

    public static IServiceCollection AddAdapterServing(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<ResidencyOptions>().Bind(configuration.GetSection(ResidencySection)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<ResidencyOptions>, ResidencyOptionsValidator>();
        services.AddSingleton(sp => sp.GetRequiredService<IGenerationEngine>().Config);
        services.AddSingleton(sp =>
        {
            var engine = sp.GetRequiredService<IOptions<EngineOptions>>().Value;
            var device = GenerationEngine.ParseDevice(engine.Device);
            // No base weights yet: the engine hands them to the room through the binder once the model is loaded.
            return new AdapterResidencyCache(sp.GetRequiredService<IOptions<ResidencyOptions>>().Value, baseWeights: null,
                device, ComputeTarget.AdapterDtype(GenerationEngine.ParseDtype(engine.Dtype, device), device), sp.GetService<ILogger<AdapterResidencyCache>>());
        });
        services.AddSingleton<IAdapterResidency>(sp => sp.GetRequiredService<AdapterResidencyCache>());
        services.AddSingleton<IAdapterBinder>(sp => new RegistryAdapterBinder(sp.GetRequiredService<AdapterRegistry>(), sp.GetRequiredService<AdapterResidencyCache>()));
        services.AddSingleton<IModelCardSource, AdapterModelCards>();
        services.AddAdapterStore(configuration);
        return services;
    }

    /// <summary>The residency bounds, checked at start like every other option (a clean message naming the setting, exit code 2).</summary>
    private sealed class ResidencyOptionsValidator : IValidateOptions<ResidencyOptions>
    {
        public ValidateOptionsResult Validate(string? name, ResidencyOptions o)
        {
            var errors = new List<string>();
            if (o.MaxDeviceAdapters < 1) errors.Add($"{ResidencySection}:MaxDeviceAdapters must be at least 1, got {o.MaxDeviceAdapters}.");
            if (o.MaxDeviceBytes < 1) errors.Add($"{ResidencySection}:MaxDeviceBytes must be positive, got {o.MaxDeviceBytes}.");
            if (o.MaxHostAdapters < 1) errors.Add($"{ResidencySection}:MaxHostAdapters must be at least 1, got {o.MaxHostAdapters}.");
            if (o.MaxHostBytes < 1) errors.Add($"{ResidencySection}:MaxHostBytes must be positive, got {o.MaxHostBytes}.");
            return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
        }
    }

    /// <summary>
    /// Serves one more adapter kind (defined outside the Adapters room, e.g. by a plug-in or a test) next to
    /// <see cref="AdapterKinds.BuiltIn"/>: uploads with its <c>peft_type</c> are validated, stored and served by it.
    /// </summary>
    public static IServiceCollection AddAdapterKind<TKind>(this IServiceCollection services) where TKind : class, IAdapterKindHandler
    {
        services.AddSingleton<IAdapterKindHandler, TKind>();
        return services;
    }

    /// <summary>Every registered adapter as a model whose parent is the base.</summary>
    private sealed class AdapterModelCards(AdapterRegistry registry) : IModelCardSource
    {
        public IEnumerable<ModelCard> ModelCards(ModelInfo baseModel) =>
            registry.List().Select(r => new ModelCard(r.Name, "model", r.CreatedAt.ToUnixTimeSeconds(), ModelEndpoints.Owner, baseModel.Id, baseModel.Id, baseModel.ContextLength));
    }
}
