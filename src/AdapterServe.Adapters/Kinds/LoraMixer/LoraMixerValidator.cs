using AdapterServe.Adapters.Kinds.Lora;
using AdapterServe.Adapters.Kinds.Mixtures;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;

namespace AdapterServe.Adapters.Kinds.LoraMixer;

/// <summary>The router of one adapted module in <c>mixer_model.safetensors</c>.</summary>
/// <param name="TensorPrefix">e.g. <c>base_model.model.model.layers.0.self_attn.q_proj</c>; the router is <c>{prefix}.router.weight</c>.</param>
public sealed record MixerRouterSpec(int Layer, Projection Projection, bool HasBias, string TensorPrefix);

/// <summary>One expert of a mixer: where it comes from and what it adapts.</summary>
/// <param name="Embedded">True: the expert's files are in the mixer's <c>experts/&lt;Name&gt;/</c>; false: a registered adapter.</param>
/// <param name="Record">The registered version the mixer was validated against (null when embedded).</param>
public sealed record MixerExpert(string Name, bool Embedded, AdapterDescription Description, AdapterRecord? Record = null)
{
    /// <summary>The expert's folder inside the mixer's directory, when embedded.</summary>
    public string EmbeddedDirectory(string mixerDirectory) => Path.Combine(mixerDirectory, LoraMixerConfig.ExpertsFolder, Name);
}

/// <summary>A validated LoRA-Mixer directory.</summary>
public sealed record LoraMixerLayout(LoraMixerConfig Config, IReadOnlyList<MixerRouterSpec> Routers, IReadOnlyList<MixerExpert> Experts, long RouterBytes);

/// <summary>
/// Checks a LoRA-Mixer directory against the base model and the registry: the config (strictly), every router
/// (<c>router.weight [E, d_in]</c>, optional <c>router.bias [E]</c>, finite), and every expert (an embedded
/// <c>experts/&lt;name&gt;/</c> PEFT LoRA validated like any upload, else a registered LoRA). Each problem is a 400
/// naming the field, tensor or expert; nothing is stored or changed here.
/// </summary>
public static class LoraMixerValidator
{
    private const string RouterSuffix = "router.weight", RouterBiasSuffix = "router.bias";

    /// <param name="registered">The current description of a registered adapter, or null when the name is not registered.</param>
    public static LoraMixerLayout Validate(string directory, ModelConfig baseModel, Func<string, AdapterRecord?> registered, AdapterValidationOptions? options = null) =>
        Validate(directory, LoraMixerConfig.Load(Path.Combine(directory, LoraMixerConfig.FileName)), baseModel, registered, options);

    public static LoraMixerLayout Validate(string directory, LoraMixerConfig config, ModelConfig baseModel, Func<string, AdapterRecord?> registered, AdapterValidationOptions? options = null)
    {
        options ??= new AdapterValidationOptions();
        var experts = config.Experts.Select(name => Expert(directory, name, baseModel, registered, options)).ToList();
        var (routers, bytes) = Routers(Path.Combine(directory, LoraMixerConfig.RouterFileName), config, experts, baseModel, options.ScanWeights);

        var unexpected = Directory.Exists(Path.Combine(directory, LoraMixerConfig.ExpertsFolder))
            ? Directory.EnumerateFileSystemEntries(Path.Combine(directory, LoraMixerConfig.ExpertsFolder)).Select(Path.GetFileName)
                .Where(n => !config.Experts.Contains(n!, StringComparer.Ordinal)).ToList()
            : [];
        if (unexpected.Count > 0)
            throw new AdapterValidationException(
                $"{LoraMixerConfig.ExpertsFolder}/ holds {string.Join(", ", unexpected.Select(n => $"'{n}'"))}, which adapter_config.json does not list in 'experts'", "invalid_adapter_config");
        return new LoraMixerLayout(config, routers, experts, bytes);
    }

    /// <summary>Checks one expert: embedded (validated as a PEFT LoRA against the base) or registered.</summary>
    public static MixerExpert Expert(string directory, string name, ModelConfig baseModel, Func<string, AdapterRecord?> registered, AdapterValidationOptions options)
    {
        string embedded = Path.Combine(directory, LoraMixerConfig.ExpertsFolder, name);
        AdapterDescription description;
        AdapterRecord? record = null;
        if (Directory.Exists(embedded))
        {
            try { description = AdapterValidator.Validate(embedded, baseModel, options); }
            catch (AdapterValidationException e)
            {
                throw new AdapterValidationException($"expert '{name}' ({LoraMixerConfig.ExpertsFolder}/{name}/): {e.Message}", e.Code, e.StatusCode);
            }
        }
        else
        {
            record = registered(name) ?? throw new AdapterValidationException(
                $"adapter_config.json: expert '{name}' is not a registered adapter and not embedded under {LoraMixerConfig.ExpertsFolder}/{name}/", "expert_not_found");
            description = record.Description;
        }
        if (description is not LoraDescription lora || lora.NotMixable is not null)
            throw new AdapterValidationException(
                $"adapter_config.json: expert '{name}' is a {description.Kind} adapter; a LoRA-Mixer's experts must be plain LoRA (rsLoRA, KaSA) adapters", "invalid_expert");
        return new MixerExpert(name, record is null, description, record);
    }

    private static (List<MixerRouterSpec>, long) Routers(string path, LoraMixerConfig config, List<MixerExpert> experts, ModelConfig baseModel, bool scan)
    {
        const string file = LoraMixerConfig.RouterFileName;
        using var weights = MixtureTensors.Open(path, file);
        var modules = MixtureTensors.Index(weights, file, baseModel, s => s is RouterSuffix or RouterBiasSuffix, "router.weight or router.bias");
        if (modules.Count == 0) throw new AdapterValidationException($"{file} holds no router (expected {{module}}.router.weight tensors)", "invalid_adapter_weights");

        int e = config.Experts.Count;
        var routers = new List<MixerRouterSpec>();
        long bytes = 0;
        foreach (var ((layer, projection), parts) in modules)
        {
            string module = ProjectionNames.ModulePath(layer, projection);
            string prefix = MixtureTensors.KeyPrefix + module;
            if (config.TargetModules is { } target && !target.Matches(module))
                throw MixtureTensors.Tensor(file, (parts.GetValueOrDefault(RouterSuffix) ?? parts.Values.First()).Name,
                    $"is for '{module}', which adapter_config.json's target_modules does not select", "invalid_adapter_weights");
            if (!parts.TryGetValue(RouterSuffix, out var router))
                throw MixtureTensors.Tensor(file, prefix + "." + RouterSuffix, "is missing (the module has a router bias)", "missing_tensor");
            var (dIn, _) = baseModel.ProjectionShape(projection);
            MixtureTensors.ExpectShape(file, router, [e, dIn], $"[experts = {e}, d_in = {dIn}] for {projection.ShortName()} of the base model");
            bool hasBias = parts.TryGetValue(RouterBiasSuffix, out var bias);
            if (hasBias) MixtureTensors.ExpectShape(file, bias!, [e], $"[experts = {e}]");
            if (!experts.Any(x => x.Description.ModuleSummaries.Any(m => m.Layer == layer && m.Projection == projection)))
                throw MixtureTensors.Tensor(file, router.Name, $"routes '{module}', but none of the experts ({string.Join(", ", config.Experts)}) adapts it", "invalid_adapter_weights");
            routers.Add(new MixerRouterSpec(layer, projection, hasBias, prefix));
            bytes += parts.Values.Sum(p => p.End - p.Begin);
        }
        if (scan) MixtureTensors.RefuseNonFinite(weights, file);
        return (routers, bytes);
    }
}
