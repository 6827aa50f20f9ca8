using AdapterServe.Modeling;

namespace AdapterServe.Engine;

/// <summary>
/// What one request's adapters resolved to at submit (names, versions, scales, leases). The Adapters room derives its
/// own binding from this; the engine only keeps it with the request and hands it back.
/// </summary>
public abstract class AdapterBinding
{
    /// <summary>
    /// Equal for bindings that apply the same adapters with the same scales, computed once when the binding is made.
    /// The engine lays such sequences next to each other in a step, so each adapter's tokens form one contiguous
    /// segment (no gather/scatter).
    /// </summary>
    public abstract string GroupKey { get; }
}

/// <summary>One segment of a step's packed tokens that shares the same adapter binding (null = the base).</summary>
public readonly record struct StepSegment(int TokenStart, int TokenCount, AdapterBinding? Binding);

/// <summary>
/// The projection hook of ONE forward step, built by the Adapters room. The engine calls <see cref="Complete"/> exactly
/// once when the step ends (after the forward pass, or after it failed): per-step work lands there (e.g. expert
/// counts), and the hook frees what it built for the step.
/// </summary>
public interface IAdapterStepHook : IProjectionHook
{
    void Complete();
}

/// <summary>
/// The engine's port to the Adapters room. <see cref="Bind"/> runs on the caller's thread at submit time
/// (plain data: resolves names, takes leases so the version is fixed); the rest runs on the engine thread.
/// </summary>
public interface IAdapterBinder
{
    /// <summary>Engine thread, once the model is loaded and before any step: the base weights adapters are built against.</summary>
    void ModelReady(IBaseWeights baseWeights);
    /// <exception cref="AdapterNotFoundException">A name is not registered.</exception>
    AdapterBinding Bind(IReadOnlyList<AdapterRef> adapters);
    /// <summary>True when every adapter of the binding is resident on the device (starts loading it if not). Throws if a load failed.</summary>
    bool IsReady(AdapterBinding binding);
    void Release(AdapterBinding binding);
    /// <summary>The projection hook of one step, or null when no segment has an adapter.</summary>
    IAdapterStepHook? BuildHook(IReadOnlyList<StepSegment> segments);
}
