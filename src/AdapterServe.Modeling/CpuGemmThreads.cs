using System.Runtime.InteropServices;
using TorchSharp;

namespace AdapterServe.Modeling;

/// <summary>
/// How many threads libtorch's CPU GEMMs (MKL, linked into <c>libtorch_cpu.so</c>) use on the calling thread.
/// <para>
/// MKL splits even a 24×24×24 product over every intra-op thread, and on a small machine the split costs far more
/// than the product: on the 2-core bench machine a 24³ GEMM takes 12 µs on two threads and 2.3 µs on one, and an r16
/// LoRA's <c>x Aᵀ</c> plus <c>Bᵀ</c> accumulation for 16 tokens 33 µs against 13 µs. Adapter deltas are hundreds of such
/// products per step, while the base model's GEMMs of the same step do gain from the threads. So the small products
/// run inside <see cref="OneThread"/>, which sets MKL's thread-local count (<c>MKL_Set_Num_Threads_Local</c>) and
/// leaves the OpenMP team alone: <c>torch.set_num_threads</c> would resize the team twice per projection, and every
/// base GEMM after it paid for waking the team (the b16 base step got 15–20 % slower in that trial).
/// </para>
/// Where the symbol is missing (a libtorch without MKL), <see cref="OneThread"/> does nothing.
/// </summary>
public static class CpuGemmThreads
{
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int SetLocalThreads(int threads);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int GetMaxThreads();

    private static readonly SetLocalThreads? SetLocal = Resolve<SetLocalThreads>("MKL_Set_Num_Threads_Local");
    private static readonly GetMaxThreads? GetMax = Resolve<GetMaxThreads>("MKL_Get_Max_Threads");

    /// <summary>True when the loaded libtorch exposes MKL's thread-local setting.</summary>
    public static bool Available => SetLocal is not null;

    /// <summary>MKL GEMMs issued by the calling thread run on one thread until the scope is disposed (on the same thread).</summary>
    public static Scope OneThread() => SetLocal is null ? default : new Scope(SetLocal(1));

    /// <summary>Threads MKL would use for a GEMM issued by the calling thread now; null without MKL.</summary>
    public static int? Current => GetMax?.Invoke();

    /// <summary>Restores the calling thread's previous MKL setting (0 = the process-wide one) when disposed.</summary>
    public readonly struct Scope : IDisposable
    {
        private readonly int _previous;
        private readonly bool _active;

        internal Scope(int previous)
        {
            _previous = previous;
            _active = true;
        }

        public void Dispose()
        {
            if (_active) SetLocal!(_previous);
        }
    }

    private static T? Resolve<T>(string name) where T : Delegate
    {
        // TorchSharp loads libtorch on first use; dlopen by soname then returns the library already in the process.
        // MKL's C entry points (mixed case) take their arguments by value; the lower-case exports are the Fortran ones.
        _ = torch.get_num_threads();
        if (!NativeLibrary.TryLoad("libtorch_cpu.so", out var library) && !NativeLibrary.TryLoad("torch_cpu", out library)) return null;
        return NativeLibrary.TryGetExport(library, name, out var export) ? Marshal.GetDelegateForFunctionPointer<T>(export) : null;
    }
}
