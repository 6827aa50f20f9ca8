namespace AdapterServe.Bench;

/// <summary>A benchmark that cannot run or that failed; the message says why. Exit code 1.</summary>
public class BenchException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Wrong command line: exit code 2, with the usage text.</summary>
public sealed class UsageException(string message) : BenchException(message);
