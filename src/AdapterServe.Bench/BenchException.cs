namespace AdapterServe.Bench;

/// <summary>A benchmark that cannot run or that failed; the message says why. Exit code 1.</summary>
public class BenchException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Wrong command line: exit code 2, with the usage text.</summary>
public sealed class UsageException(string message) : BenchException(message);

/// <summary>A scenario whose parts are not in this build yet (exit code 3).</summary>
public sealed class ScenarioUnavailableException(string message) : BenchException(message);
