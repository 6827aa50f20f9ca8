using System.Runtime.InteropServices;
using AdapterServe.Adapters.Kinds.Mixtures;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Adapters.Kinds.Smore;

/// <summary>
/// The S'MoRE tree's routing and experts in ONE native call on the CPU (<c>Native/smore_tree.c</c>, in the mixture
/// kinds' native library, <see cref="NativeMixtures"/>): what <see cref="SmoreTree.Route"/>
/// and <see cref="SmoreTree.Evaluate"/> do in about 60 small libtorch calls, between the same two GEMMs (the input
/// projection before it, the final projection after it), reading the same <see cref="SmoreTensors"/> and writing the
/// same routing. For steps of few tokens on the CPU, where each libtorch call costs more than its arithmetic. Nothing
/// leaves the device (the tensors' CPU memory) and nothing is copied to or from .NET arrays.
/// </summary>
internal static unsafe class SmoreKernel
{
    /// <summary>Routing and experts of G trees over <c>[G, M]</c> rows: x_L <c>[G, M, d_L]</c> of every row, and the routing with leading shape <paramref name="rows"/> (G·M rows).</summary>
    /// <param name="projected"><see cref="SmoreTree.Project"/> of the tokens, <c>[G, M, d_down + Σ s_l·r_l]</c> float32 on the CPU.</param>
    public static (Tensor Below, SmoreRouting Routing) Run(SmoreTensors tree, Tensor projected, long[] rows)
    {
        var signature = tree.Signature;
        int levels = signature.Levels.Count;
        long g = projected.size(0), m = projected.size(1);
        if (projected.dtype != ScalarType.Float32 || projected.device_type != DeviceType.CPU || tree.Input.device_type != DeviceType.CPU)
            throw new ArgumentException("the native S'MoRE tree runs float32 tensors on the CPU", nameof(projected));
        if (projected.size(2) != signature.InputWidth || tree.Trees != g)
            throw new ArgumentException($"projected rows [{string.Join(", ", projected.shape)}] do not fit {tree.Trees} trees of {signature}", nameof(projected));

        var below = empty([g, m, signature.HiddenDim(levels)], ScalarType.Float32);                 // [G, M, d_L]
        var ids = new Tensor[levels];
        var weights = new Tensor[levels];
        var kept = new List<Tensor>();                                                               // what the native call reads or writes
        var level = stackalloc Level[levels];
        for (int l = 0; l < levels; l++)
        {
            var shape = signature.Levels[l];
            var t = tree.Levels[l];
            long paths = signature.PathsAt(l);
            ids[l] = empty([.. rows, paths], ScalarType.Int64);                                     // [..., P_l]
            weights[l] = empty([.. rows, paths], ScalarType.Float32);                              // [..., P_l]
            level[l] = new Level
            {
                Experts = shape.Experts, Rank = shape.Rank, FanOut = shape.FanOut, GateDim = shape.GateDim,
                B = NativeMixtures.Data(t.B, kept), BBias = NativeMixtures.Data(t.BBias, kept), W = NativeMixtures.Data(t.W, kept), WBias = NativeMixtures.Data(t.WBias, kept), Slope = NativeMixtures.Data(t.Slope, kept),
                GateIn = NativeMixtures.Data(t.GateIn, kept), GateInBias = NativeMixtures.Data(t.GateInBias, kept), GateSlope = NativeMixtures.Data(t.GateSlope, kept),
                GateOut = NativeMixtures.Data(t.GateOut, kept), GateOutBias = NativeMixtures.Data(t.GateOutBias, kept), Keys = NativeMixtures.Data(t.Keys, kept),
                Ids = NativeMixtures.Data(ids[l], kept), Weights = NativeMixtures.Data(weights[l], kept),
            };
        }
        var pass = new Pass
        {
            Trees = checked((int)g), Rows = checked((int)m), Levels = levels, DownDim = signature.DownDim,
            GateType = (int)signature.GateType, GateActivation = (int)signature.GateActivation,
            ExpertActivation = (int)signature.ExpertActivation, Position = (int)signature.Position,
            Projected = NativeMixtures.Data(projected, kept), Out = NativeMixtures.Data(below, kept), Level = level,
        };
        int status = Tree(&pass);
        GC.KeepAlive(kept);
        if (status != 0) throw new OutOfMemoryException("the native S'MoRE tree could not allocate its scratch memory");
        return (below, new SmoreRouting(ids, weights));
    }

    /// <summary>One sub-layer; the layout of <c>smore_level</c> in <c>smore_tree.c</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Level
    {
        public int Experts, Rank, FanOut, GateDim;
        public IntPtr B, BBias, W, WBias, Slope, GateIn, GateInBias, GateSlope, GateOut, GateOutBias, Keys, Ids, Weights;
    }

    /// <summary>The pass; the layout of <c>smore_pass</c> in <c>smore_tree.c</c>. The enums' values are the C code's.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Pass
    {
        public int Trees, Rows, Levels, DownDim, GateType, GateActivation, ExpertActivation, Position;
        public IntPtr Projected, Out;
        public Level* Level;
    }

    [DllImport(NativeMixtures.Library, EntryPoint = "adapterserve_smore_tree")]
    private static extern int Tree(Pass* pass);

    static SmoreKernel()
    {
        // The C enums are numbered as these: a reordering on either side must fail loudly, not route differently.
        if ((int)SmoreGateType.Switch != 0 || (int)SmoreGateType.NoisyTopK != 1 || (int)SmoreGateType.Dense != 2
            || (int)SmoreActivation.Identity != 0 || (int)SmoreActivation.Tanh != 1 || (int)SmoreActivation.Relu != 2 || (int)SmoreActivation.Prelu != 3
            || (int)SmoreActivationPosition.All != 0 || (int)SmoreActivationPosition.Child != 1 || (int)SmoreActivationPosition.ChildV2 != 2)
            throw new InvalidOperationException("SmoreGateType, SmoreActivation or SmoreActivationPosition no longer match smore_tree.c's numbering");
    }
}
