using System.Text.Json.Nodes;
using AdapterServe.Adapters.Store;
using AdapterServe.Modeling;
using static TorchSharp.torch;

namespace AdapterServe.Adapters;

/// <summary>
/// One kind of adapter (one folder under <c>Kinds/</c>), chosen by the <c>peft_type</c> of <c>adapter_config.json</c>.
/// It owns everything kind-specific: its files, its config, its validation against the base model, its description
/// for the API, its loaded tensors, and the batched execution of a projection for all its adapters of a step.
/// Handlers are stateless and shared; list built-in ones in <see cref="AdapterKinds.BuiltIn"/>, add others with
/// <see cref="AdapterKinds.With"/>.
/// </summary>
public interface IAdapterKindHandler
{
    /// <summary><c>peft_type</c> values this kind serves (compared ignoring case), e.g. <c>LORA</c>.</summary>
    IReadOnlyList<string> PeftTypes { get; }

    /// <summary>The files (and nested folders) of an adapter of this kind, relative to its directory.</summary>
    AdapterFiles Files { get; }

    /// <summary>
    /// Reads the kind's config (<paramref name="config"/>: adapter_config.json, already parsed) and files in
    /// <paramref name="directory"/>, checks them against <paramref name="baseModel"/> and describes the adapter.
    /// Plain data, no tensors.
    /// </summary>
    /// <exception cref="AdapterValidationException">Naming the file, field or tensor at fault.</exception>
    AdapterDescription Describe(string directory, JsonObject config, ModelConfig baseModel, AdapterValidationOptions options);

    /// <summary>
    /// Loads <paramref name="record"/>'s tensors (its <see cref="AdapterRecord.Description"/> is this kind's own),
    /// computed against <paramref name="baseWeights"/> and stored in <paramref name="dtype"/> on <paramref name="device"/>.
    /// Runs on a loader thread, outside any inference_mode guard.
    /// </summary>
    /// <exception cref="AdapterValidationException">A file or tensor does not match the description.</exception>
    IAdapterModules Load(AdapterRecord record, IBaseWeights baseWeights, Device device, ScalarType dtype);

    /// <summary>
    /// The executor of one forward step for EVERY token group of this kind in the step (each group: one adapter with
    /// one scale, its tokens), so a kind may stack its adapters and serve them all in one call per projection.
    /// Engine thread.
    /// </summary>
    IAdapterStepExecutor CreateStepExecutor(IReadOnlyList<AdapterTokenGroup> groups);
}

/// <summary>
/// The loaded tensors of one adapter version, in a kind's own layout. Owns its tensors; tensors in
/// <see cref="Shared"/> storage are views that other loaded adapters may hold too.
/// </summary>
public interface IAdapterModules : IDisposable
{
    /// <summary>Bytes of the tensors only this adapter holds (<see cref="Shared"/> storage not included).</summary>
    long Bytes { get; }
    /// <summary>
    /// Tensor storage this adapter holds views of and other loaded adapters may hold too (a LoRA-Mixer's expert stacks,
    /// which the same LoRA called alone reads): the residency cache counts each once, however many adapters hold it.
    /// </summary>
    IReadOnlyCollection<SharedStorage> Shared => [];
    /// <summary>True when the adapter changes this projection of this layer.</summary>
    bool Targets(int layer, Projection projection);
    /// <summary>A copy on <paramref name="device"/>, same dtype (host tier → device tier).</summary>
    IAdapterModules To(Device device);
}

/// <summary>One kind's share of one forward step, built by <see cref="IAdapterKindHandler.CreateStepExecutor"/>.</summary>
public interface IAdapterStepExecutor
{
    /// <summary>
    /// Adds this kind's contribution for all its groups to <paramref name="y"/> <c>[N, d_out]</c> in place. Each
    /// group's rows of <paramref name="y"/> hold the base output <c>x W0ᵀ</c> plus whatever other kinds added for
    /// the same rows (adapters of one sequence are summed). Called inside the step hook's dispose scope.
    /// </summary>
    /// <param name="x">Input of the projection for every token of the step, <c>[N, d_in]</c>.</param>
    /// <param name="baseWeight"><c>W0: [d_out, d_in]</c>, read-only.</param>
    void Apply(int layer, Projection projection, Tensor x, Tensor y, Tensor baseWeight);

    /// <summary>
    /// <see cref="Apply"/> for sibling projections of one input (<see cref="IProjectionHook.ApplySiblings"/>): each
    /// <paramref name="ys"/>[i] gets this kind's contribution at <paramref name="projections"/>[i]. The default applies
    /// them one by one; a kind overrides it to share the work that depends on x alone.
    /// </summary>
    void ApplySiblings(int layer, IReadOnlyList<Projection> projections, Tensor x, IReadOnlyList<Tensor> ys, IReadOnlyList<Tensor> baseWeights)
    {
        for (int i = 0; i < projections.Count; i++) Apply(layer, projections[i], x, ys[i], baseWeights[i]);
    }

    /// <summary>The step ran: per-step bookkeeping (such as expert counts), and free what was built for the step.</summary>
    void Complete();

    /// <summary>The forward pass threw (the step is retried or split): free what was built for the step, no end-of-step work.</summary>
    void Abandon();
}

/// <summary>
/// One block of tensor storage that several loaded adapters may hold views of (compared by reference). It stays
/// allocated while any of them lives, so each holder's footprint includes all of <see cref="Bytes"/>.
/// </summary>
public sealed class SharedStorage(long bytes, string description)
{
    public long Bytes { get; } = bytes;
    public override string ToString() => $"{description} ({Bytes} bytes)";
}
