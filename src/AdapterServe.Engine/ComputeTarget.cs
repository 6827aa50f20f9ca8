using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Engine;

/// <summary>
/// The one reader of <c>--device</c> and <c>--dtype</c> (<see cref="EngineOptions.Device"/>, <see cref="EngineOptions.Dtype"/>):
/// the server's option check and the engine's model load use the same spellings and the same messages.
/// Devices: <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c>. Dtypes: <c>float32</c> (<c>fp32</c>, <c>f32</c>), <c>bfloat16</c>
/// (<c>bf16</c>), <c>float16</c> (<c>fp16</c>, <c>f16</c>; CUDA only: on the CPU it is ~250× slower than float32).
/// </summary>
public static class ComputeTarget
{
    /// <summary>Why <paramref name="device"/> is not a device name, or null when it is one.</summary>
    public static string? DeviceProblem(string? device) =>
        TryDevice(device, out _) ? null : $"must be 'cpu', 'cuda' or 'cuda:N', got '{device}'";

    /// <summary>Why <paramref name="dtype"/> cannot be used on <paramref name="device"/>, or null when it can.</summary>
    public static string? DtypeProblem(string? dtype, string? device)
    {
        bool cuda = TryDevice(device, out var type) && type == DeviceType.CUDA;
        return TryDtype(dtype, out var scalar) switch
        {
            false => $"must be float32, bfloat16 or float16, got '{dtype}'",
            true when scalar == ScalarType.Float16 && !cuda => "float16 needs --device cuda; on the CPU use float32 or bfloat16 (float16 matmul there is ~250x slower than float32)",
            true => null,
        };
    }

    /// <summary>The device; <see cref="ArgumentException"/> for an unknown name or CUDA missing from this build.</summary>
    public static Device ParseDevice(string device)
    {
        if (!TryDevice(device, out var type)) throw new ArgumentException($"device {DeviceProblem(device)}");
        if (type == DeviceType.CUDA && !cuda.is_available())
            throw new ArgumentException($"device '{device}' requested but CUDA is not available in this build (build with -p:TorchSharpBackend=cuda on a GPU machine)");
        return type == DeviceType.CPU ? CPU : new Device(device.Trim().ToLowerInvariant());
    }

    /// <summary>The compute dtype on <paramref name="device"/>; <see cref="ArgumentException"/> when unknown or not usable there.</summary>
    public static ScalarType ParseDtype(string dtype, Device device)
    {
        if (!TryDtype(dtype, out var scalar)) throw new ArgumentException($"dtype {DtypeProblem(dtype, null)}");
        if (scalar == ScalarType.Float16 && device.type != DeviceType.CUDA)
            throw new ArgumentException($"dtype {DtypeProblem(dtype, null)}");
        return scalar;
    }

    /// <summary>
    /// The dtype adapter weights are stored and computed in for a model of <paramref name="modelDtype"/> on
    /// <paramref name="device"/>: the model's, except bfloat16 on the CPU, where adapters stay float32 and each
    /// projection casts its input once. An adapter's GEMMs are tiny (an inner or outer size of r), and libtorch's CPU
    /// bfloat16 GEMM costs about 25 µs per call at that size against 2–7 µs for the float32 one with both casts
    /// (135m, r16: one LoRA on all projections cost 0.60× the bfloat16 base at batch 1 with bfloat16 adapters).
    /// </summary>
    public static ScalarType AdapterDtype(ScalarType modelDtype, Device device) =>
        modelDtype == ScalarType.BFloat16 && device.type == DeviceType.CPU ? ScalarType.Float32 : modelDtype;

    private static bool TryDevice(string? text, out DeviceType type)
    {
        string d = text?.Trim().ToLowerInvariant() ?? "";
        type = d == "cpu" ? DeviceType.CPU : DeviceType.CUDA;
        return d == "cpu" || d == "cuda"
            || (d.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(d.AsSpan(5), System.Globalization.NumberStyles.None, null, out _));
    }

    private static bool TryDtype(string? text, out ScalarType dtype)
    {
        (bool known, dtype) = (text?.Trim().ToLowerInvariant()) switch
        {
            "float32" or "fp32" or "f32" => (true, ScalarType.Float32),
            "bfloat16" or "bf16" => (true, ScalarType.BFloat16),
            "float16" or "fp16" or "f16" => (true, ScalarType.Float16),
            _ => (false, ScalarType.Float32),
        };
        return known;
    }
}
