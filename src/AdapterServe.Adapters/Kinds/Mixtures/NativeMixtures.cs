using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Mixtures;

/// <summary>Which form runs a mixture's small per-token maths (S'MoRE's routing and experts, OMoE's Gram–Schmidt): the same results either way.</summary>
public enum MixtureForm
{
    /// <summary>The native form for steps of few rows on the CPU when it was built (each kind sets how few); the tensor form otherwise.</summary>
    Auto,
    /// <summary>Batched libtorch calls: any device, any number of rows.</summary>
    Tensors,
    /// <summary>One native call (CPU only; throws when the native library was not built).</summary>
    Native,
}

/// <summary>
/// The native library of the mixture kinds (<c>libadapterserve_native.so</c>, compiled from <c>Native/*.c</c> by
/// <c>build/AdapterServeNative.targets</c> when there is a C compiler): whether it is there, which form a step runs,
/// and the addresses of tensors' memory for it. The native code works on the tensors' own CPU memory: nothing is
/// copied to or from .NET arrays and nothing leaves the device.
/// </summary>
internal static class NativeMixtures
{
    internal const string Library = "adapterserve_native";

    /// <summary>Whether the native library was built and loads (no C compiler at build time: the tensor forms serve everything).</summary>
    public static bool Available { get; } = NativeLibrary.TryLoad(Library, typeof(NativeMixtures).Assembly, DllImportSearchPath.AssemblyDirectory, out _);

    [ThreadStatic] private static MixtureForm? _formOnThisThread;

    /// <summary>
    /// Makes <see cref="MixtureForm.Auto"/> mean <paramref name="form"/> on the calling thread until the result is
    /// disposed, wherever a mixture runs from (per-group, sibling and slot paths): how the tests run every path in both
    /// forms against the naive computations.
    /// </summary>
    internal static IDisposable UseForm(MixtureForm form)
    {
        var previous = _formOnThisThread;
        _formOnThisThread = form;
        return new FormScope(previous);
    }

    private sealed class FormScope(MixtureForm? previous) : IDisposable
    {
        public void Dispose() => _formOnThisThread = previous;
    }

    /// <summary>Whether a step of <paramref name="rows"/> rows on <paramref name="on"/>'s device runs the native form: <paramref name="form"/> (or the thread's, for Auto), Auto meaning "on the CPU, at most <paramref name="maxRows"/> rows".</summary>
    internal static bool Runs(MixtureForm form, Tensor on, long rows, int maxRows) => (form == MixtureForm.Auto ? _formOnThisThread ?? form : form) switch
    {
        MixtureForm.Native => Available ? true : throw new InvalidOperationException($"the native mixture code (lib{Library}.so) was not built: no C compiler at build time"),
        MixtureForm.Tensors => false,
        _ => Available && on.device_type == DeviceType.CPU && rows <= maxRows,
    };

    /// <summary>The address of a float32 or int64 tensor's first element, the tensor being contiguous (a contiguous copy otherwise), kept alive in <paramref name="kept"/> for the native call.</summary>
    internal static IntPtr Data(Tensor? t, List<Tensor> kept)
    {
        if (t is null) return IntPtr.Zero;
        if (t.device_type != DeviceType.CPU || (t.dtype != ScalarType.Float32 && t.dtype != ScalarType.Int64))
            throw new ArgumentException($"the native mixture code reads float32 or int64 CPU tensors, got {t.dtype} on {t.device}", nameof(t));
        var contiguous = t.is_contiguous() ? t : t.contiguous();
        kept.Add(contiguous);
        return TensorData(contiguous.Handle);
    }

    /// <summary>TorchSharp's own accessor of <c>tensor.data_ptr()</c> (the storage offset included).</summary>
    [DllImport("LibTorchSharp", EntryPoint = "THSTensor_data")]
    private static extern IntPtr TensorData(IntPtr tensor);
}
