using AdapterServe.Modeling;

namespace AdapterServe.Engine;

/// <summary>One segment of a step's packed tokens that shares the same adapter binding (null = the base).</summary>
public readonly record struct StepSegment(int TokenStart, int TokenCount, object? Binding);

/// <summary>
/// The engine's port to the Adapters room. <see cref="Bind"/> runs on the caller's thread at submit time
/// (plain data: resolves names, takes leases so the version is fixed); the rest runs on the engine thread.
/// </summary>
public interface IAdapterBinder
{
    /// <exception cref="AdapterNotFoundException">A name is not registered.</exception>
    object Bind(IReadOnlyList<AdapterRef> adapters);
    /// <summary>True when every adapter of the binding is resident on the device (starts loading it if not). Throws if a load failed.</summary>
    bool IsReady(object binding);
    void Release(object binding);
    /// <summary>
    /// Equal for bindings that apply the same adapters with the same scales. The engine lays such sequences next to
    /// each other in a step, so each adapter's tokens form one contiguous segment (no gather/scatter).
    /// </summary>
    string GroupKey(object binding);
    /// <summary>The projection hook of one step, or null when no segment has an adapter.</summary>
    IProjectionHook? BuildHook(IReadOnlyList<StepSegment> segments);
}
