using TorchSharp;
using static TorchSharp.torch;

namespace AdapterServe.Tests.Mixtures;

/// <summary>Plain double-precision loops over host arrays: the independent side of the mixture tests.</summary>
static class MixtureNaive
{
    public static double[,] Host2(Tensor t)
    {
        var flat = t.to(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
        var result = new double[t.shape[0], t.shape[1]];
        Buffer.BlockCopy(flat, 0, result, 0, flat.Length * sizeof(double));
        return result;
    }

    public static double[] Host1(Tensor t) => t.to(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();

    public static double[] Row(double[,] m, int row) => Enumerable.Range(0, m.GetLength(1)).Select(j => m[row, j]).ToArray();

    /// <summary>m [rows, cols] · v [cols].</summary>
    public static double[] MatVec(double[,] m, double[] v)
    {
        var y = new double[m.GetLength(0)];
        for (int i = 0; i < y.Length; i++)
            for (int j = 0; j < v.Length; j++) y[i] += m[i, j] * v[j];
        return y;
    }

    public static double[] Softmax(double[] logits)
    {
        double max = logits.Max();
        var e = logits.Select(l => Math.Exp(l - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    /// <summary>Indices of the k largest values (ties: lower index first).</summary>
    public static int[] TopK(double[] values, int k) =>
        Enumerable.Range(0, values.Length).OrderByDescending(i => values[i]).ThenBy(i => i).Take(k).ToArray();

    public static double Dot(double[] a, double[] b) => a.Zip(b, (x, y) => x * y).Sum();

    public static double Norm(double[] a) => Math.Sqrt(Dot(a, a));

    /// <summary>Asserts |actual − expected| ≤ atol + rtol·|expected| element-wise.</summary>
    public static void AssertClose(double[,] expected, Tensor actual, double atol = 1e-5, double rtol = 1e-5)
    {
        var got = Host2(actual);
        Assert.Equal(expected.GetLength(0), got.GetLength(0));
        Assert.Equal(expected.GetLength(1), got.GetLength(1));
        for (int i = 0; i < expected.GetLength(0); i++)
            for (int j = 0; j < expected.GetLength(1); j++)
                Assert.True(Math.Abs(got[i, j] - expected[i, j]) <= atol + rtol * Math.Abs(expected[i, j]),
                    $"[{i}, {j}]: got {got[i, j]}, expected {expected[i, j]}");
    }
}
