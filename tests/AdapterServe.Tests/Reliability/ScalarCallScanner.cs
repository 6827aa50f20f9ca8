using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Text.RegularExpressions;

namespace AdapterServe.Tests.Reliability;

/// <summary>One call from our code to a TorchSharp member that takes, makes or converts a <c>TorchSharp.Scalar</c>.</summary>
public sealed record ScalarCall(string Caller, string Member)
{
    public override string ToString() => $"{Caller} → {Member}";
}

/// <summary>
/// Finds, in compiled IL, every call to a TorchSharp member that hands libtorch a Scalar (issue 8): members with a Scalar
/// in their signature (the implicit conversions and <c>ToScalar</c> included), members of <c>Scalar</c> itself, and
/// members whose own IL in TorchSharp.dll builds a Scalar, directly or through other TorchSharp members (<c>a + b</c>
/// → <c>add(b)</c> → <c>add(b, 1)</c>). Calls made from inside the sanctioned type (<c>TorchScalars</c>) are allowed.
/// Reads metadata only (System.Reflection.Metadata); nothing is loaded or run.
/// </summary>
public sealed class ScalarCallScanner
{
    private const string TorchSharpAssembly = "TorchSharp";
    private const string ScalarType = "TorchSharp.Scalar";

    private static readonly IReadOnlyDictionary<short, OperandType> Operands = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => o.Value, o => o.OperandType);

    private static readonly Regex ScalarInSignature = new(@"(?<![\w.])TorchSharp\.Scalar(?!\w)", RegexOptions.CultureInvariant);

    /// <summary>Keys (<see cref="MemberKey"/>) of TorchSharp members whose IL builds a Scalar, directly or transitively.</summary>
    private readonly HashSet<string> _scalarMaking;

    private ScalarCallScanner(HashSet<string> scalarMaking) => _scalarMaking = scalarMaking;

    /// <summary>TorchSharp members found to build a Scalar internally (for diagnostics).</summary>
    public IReadOnlySet<string> ScalarMakingMembers => _scalarMaking;

    /// <summary>Analyses TorchSharp.dll: which of its members build a Scalar on the way to libtorch.</summary>
    public static ScalarCallScanner ForTorchSharp(string torchSharpPath)
    {
        using var stream = File.OpenRead(torchSharpPath);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();
        var names = new SignatureNames(md);

        var makesDirectly = new HashSet<string>(StringComparer.Ordinal);
        var callers = new Dictionary<string, List<string>>(StringComparer.Ordinal); // callee → its callers inside TorchSharp
        foreach (var methodHandle in md.MethodDefinitions)
        {
            var method = md.GetMethodDefinition(methodHandle);
            if (method.RelativeVirtualAddress == 0) continue;
            string caller = MemberKey(md, names, methodHandle);
            foreach (var target in CallTargets(pe.GetMethodBody(method.RelativeVirtualAddress)))
            {
                if (!TryDescribe(md, names, target, out var callee)) continue;
                if (callee.DeclaringType == ScalarType && callee.Name is ".ctor" or "op_Implicit" || callee.Returns == ScalarType)
                    makesDirectly.Add(caller);
                if (callee.InTorchSharp)
                {
                    if (!callers.TryGetValue(callee.Key, out var list)) callers[callee.Key] = list = [];
                    list.Add(caller);
                }
            }
        }

        var making = new HashSet<string>(makesDirectly, StringComparer.Ordinal);
        var pending = new Queue<string>(makesDirectly);
        while (pending.TryDequeue(out var key))
            foreach (var caller in callers.GetValueOrDefault(key) ?? [])
                if (making.Add(caller)) pending.Enqueue(caller);
        return new ScalarCallScanner(making);
    }

    /// <summary>Every Scalar-handling TorchSharp call in <paramref name="assemblyPath"/> made outside <paramref name="sanctionedType"/>.</summary>
    public IReadOnlyList<ScalarCall> Scan(string assemblyPath, string sanctionedType)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();
        var names = new SignatureNames(md);
        var found = new List<ScalarCall>();
        foreach (var typeHandle in md.TypeDefinitions)
        {
            if (IsWithin(md, typeHandle, sanctionedType)) continue;
            foreach (var methodHandle in md.GetTypeDefinition(typeHandle).GetMethods())
            {
                var method = md.GetMethodDefinition(methodHandle);
                if (method.RelativeVirtualAddress == 0) continue;
                foreach (var target in CallTargets(pe.GetMethodBody(method.RelativeVirtualAddress)))
                {
                    if (!TryDescribe(md, names, target, out var callee) || !callee.InTorchSharp) continue;
                    bool scalarInSignature = ScalarInSignature.IsMatch(callee.Signature);
                    if (scalarInSignature || callee.DeclaringType == ScalarType || _scalarMaking.Contains(callee.Key))
                        found.Add(new ScalarCall(CallerName(md, methodHandle), callee.Display));
                }
            }
        }
        return found;
    }

    /// <summary>A TorchSharp-relative description of a called member.</summary>
    private readonly record struct Callee(string Key, string DeclaringType, string Name, string Signature, string Returns, bool InTorchSharp, string Display);

    /// <summary>Method tokens of call, callvirt, newobj, ldftn and ldvirtftn in one method body.</summary>
    private static List<EntityHandle> CallTargets(MethodBodyBlock body)
    {
        var il = body.GetILReader();
        var targets = new List<EntityHandle>();
        while (il.RemainingBytes > 0)
        {
            short code = il.ReadByte();
            if (code == 0xFE) code = unchecked((short)(0xFE00 | il.ReadByte()));
            var operand = Operands[code];
            if (operand == OperandType.InlineMethod)
            {
                targets.Add(MetadataTokens.EntityHandle(il.ReadInt32()));
                continue;
            }
            int skip = operand switch
            {
                OperandType.InlineNone => 0,
                OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                OperandType.InlineVar => 2,
                OperandType.InlineI8 or OperandType.InlineR => 8,
                OperandType.InlineSwitch => 4 * il.ReadInt32(),
                _ => 4,
            };
            il.Offset += skip;
        }
        return targets;
    }

    private static bool TryDescribe(MetadataReader md, SignatureNames names, EntityHandle handle, out Callee callee)
    {
        callee = default;
        switch (handle.Kind)
        {
            case HandleKind.MethodSpecification:
                return TryDescribe(md, names, md.GetMethodSpecification((MethodSpecificationHandle)handle).Method, out callee);
            case HandleKind.MethodDefinition:
            {
                var def = md.GetMethodDefinition((MethodDefinitionHandle)handle);
                var sig = def.DecodeSignature(names, null);
                string type = names.TypeDefinitionName(def.GetDeclaringType());
                callee = Make(type, md.GetString(def.Name), sig, InTorchSharp(md));
                return true;
            }
            case HandleKind.MemberReference:
            {
                var member = md.GetMemberReference((MemberReferenceHandle)handle);
                if (member.GetKind() != MemberReferenceKind.Method) return false;
                var (type, inTorchSharp) = member.Parent.Kind switch
                {
                    HandleKind.TypeReference => (names.TypeReferenceName((TypeReferenceHandle)member.Parent), names.IsTorchSharp((TypeReferenceHandle)member.Parent)),
                    HandleKind.TypeDefinition => (names.TypeDefinitionName((TypeDefinitionHandle)member.Parent), InTorchSharp(md)),
                    HandleKind.TypeSpecification => names.GenericDefinitionOf((TypeSpecificationHandle)member.Parent),
                    _ => ("", false),
                };
                if (type.Length == 0) return false;
                callee = Make(type, md.GetString(member.Name), member.DecodeMethodSignature(names, null), inTorchSharp);
                return true;
            }
            default:
                return false;
        }
    }

    private static Callee Make(string type, string name, MethodSignature<string> sig, bool inTorchSharp)
    {
        string parameters = string.Join(", ", sig.ParameterTypes);
        string generic = sig.GenericParameterCount > 0 ? $"`{sig.GenericParameterCount}" : "";
        string key = $"{type}::{name}{generic}({parameters}){sig.ReturnType}";
        string display = $"{Short(type)}.{name}({string.Join(", ", sig.ParameterTypes.Select(Short))})";
        return new Callee(key, type, name, $"({parameters}){sig.ReturnType}", sig.ReturnType, inTorchSharp, display);
    }

    private static bool InTorchSharp(MetadataReader md) => md.IsAssembly && md.GetString(md.GetAssemblyDefinition().Name) == TorchSharpAssembly;

    private static string MemberKey(MetadataReader md, SignatureNames names, MethodDefinitionHandle handle)
    {
        TryDescribe(md, names, handle, out var callee);
        return callee.Key;
    }

    /// <summary>Drops namespaces and generic arities for messages: <c>TorchSharp.torch/Tensor</c> → <c>torch.Tensor</c>.</summary>
    private static string Short(string typeName)
    {
        string withoutNamespaces = string.Join("/", typeName.Split('/').Select((part, i) => i == 0 ? part[(part.LastIndexOf('.') + 1)..] : part));
        return withoutNamespaces.Replace('/', '.');
    }

    private static bool IsWithin(MetadataReader md, TypeDefinitionHandle handle, string typeFullName)
    {
        for (var h = handle; !h.IsNil; h = md.GetTypeDefinition(h).GetDeclaringType())
        {
            var t = md.GetTypeDefinition(h);
            if (t.GetDeclaringType().IsNil && $"{md.GetString(t.Namespace)}.{md.GetString(t.Name)}" == typeFullName) return true;
        }
        return false;
    }

    /// <summary>
    /// <c>Type.Method</c> as written in the source: compiler-generated closures, state machines, lambdas and local functions
    /// are named after the method they were written in.
    /// </summary>
    private static string CallerName(MetadataReader md, MethodDefinitionHandle handle)
    {
        var method = md.GetMethodDefinition(handle);
        string name = Unmangle(md.GetString(method.Name));
        var types = new List<string>();
        for (var h = method.GetDeclaringType(); !h.IsNil; h = md.GetTypeDefinition(h).GetDeclaringType())
        {
            string typeName = md.GetString(md.GetTypeDefinition(h).Name);
            if (typeName.StartsWith('<'))
            {
                if (typeName.Contains(">d__", StringComparison.Ordinal)) name = Unmangle(typeName); // async/iterator state machine
                continue;
            }
            int tick = typeName.IndexOf('`');
            types.Insert(0, tick < 0 ? typeName : typeName[..tick]);
        }
        return $"{string.Join(".", types)}.{name}";
    }

    /// <summary><c>&lt;Forward&gt;b__3_0</c> → <c>Forward</c>; ordinary names unchanged.</summary>
    private static string Unmangle(string name) => name.StartsWith('<') && name.IndexOf('>') is > 1 and var end ? name[1..end] : name;

    /// <summary>Renders signature types as full names (<c>Namespace.Outer/Inner</c>), assembly-independent, modifiers dropped.</summary>
    private sealed class SignatureNames(MetadataReader md) : ISignatureTypeProvider<string, object?>
    {
        public string TypeDefinitionName(TypeDefinitionHandle handle)
        {
            var t = md.GetTypeDefinition(handle);
            var outer = t.GetDeclaringType();
            return outer.IsNil ? Join(md.GetString(t.Namespace), md.GetString(t.Name)) : $"{TypeDefinitionName(outer)}/{md.GetString(t.Name)}";
        }

        public string TypeReferenceName(TypeReferenceHandle handle)
        {
            var t = md.GetTypeReference(handle);
            return t.ResolutionScope.Kind == HandleKind.TypeReference
                ? $"{TypeReferenceName((TypeReferenceHandle)t.ResolutionScope)}/{md.GetString(t.Name)}"
                : Join(md.GetString(t.Namespace), md.GetString(t.Name));
        }

        public bool IsTorchSharp(TypeReferenceHandle handle)
        {
            var scope = md.GetTypeReference(handle).ResolutionScope;
            return scope.Kind switch
            {
                HandleKind.TypeReference => IsTorchSharp((TypeReferenceHandle)scope),
                HandleKind.AssemblyReference => md.GetString(md.GetAssemblyReference((AssemblyReferenceHandle)scope).Name) == TorchSharpAssembly,
                _ => false,
            };
        }

        /// <summary>The generic type a <c>Module&lt;Tensor, Tensor&gt;</c>-like member reference is declared on.</summary>
        public (string Name, bool InTorchSharp) GenericDefinitionOf(TypeSpecificationHandle handle)
        {
            var blob = md.GetBlobReader(md.GetTypeSpecification(handle).Signature);
            if (blob.ReadSignatureTypeCode() != SignatureTypeCode.GenericTypeInstance) return ("", false);
            blob.ReadSignatureTypeCode(); // CLASS or VALUETYPE, read as TypeHandle
            var definition = blob.ReadTypeHandle();
            return definition.Kind switch
            {
                HandleKind.TypeReference => (TypeReferenceName((TypeReferenceHandle)definition), IsTorchSharp((TypeReferenceHandle)definition)),
                HandleKind.TypeDefinition => (TypeDefinitionName((TypeDefinitionHandle)definition), InTorchSharp(md)),
                _ => ("", false),
            };
        }

        private static string Join(string ns, string name) => ns.Length == 0 ? name : $"{ns}.{name}";

        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => TypeDefinitionName(handle);
        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => TypeReferenceName(handle);
        public string GetTypeFromSpecification(MetadataReader reader, object? context, TypeSpecificationHandle handle, byte rawTypeKind) =>
            reader.GetTypeSpecification(handle).DecodeSignature(this, context);
        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => "System." + typeCode switch
        {
            PrimitiveTypeCode.Void => "Void", PrimitiveTypeCode.Boolean => "Boolean", PrimitiveTypeCode.Char => "Char",
            PrimitiveTypeCode.SByte => "SByte", PrimitiveTypeCode.Byte => "Byte", PrimitiveTypeCode.Int16 => "Int16",
            PrimitiveTypeCode.UInt16 => "UInt16", PrimitiveTypeCode.Int32 => "Int32", PrimitiveTypeCode.UInt32 => "UInt32",
            PrimitiveTypeCode.Int64 => "Int64", PrimitiveTypeCode.UInt64 => "UInt64", PrimitiveTypeCode.Single => "Single",
            PrimitiveTypeCode.Double => "Double", PrimitiveTypeCode.String => "String", PrimitiveTypeCode.IntPtr => "IntPtr",
            PrimitiveTypeCode.UIntPtr => "UIntPtr", PrimitiveTypeCode.Object => "Object", PrimitiveTypeCode.TypedReference => "TypedReference",
            _ => typeCode.ToString(),
        };
        public string GetSZArrayType(string elementType) => elementType + "[]";
        public string GetArrayType(string elementType, ArrayShape shape) => $"{elementType}[{new string(',', shape.Rank - 1)}]";
        public string GetByReferenceType(string elementType) => elementType + "&";
        public string GetPointerType(string elementType) => elementType + "*";
        public string GetPinnedType(string elementType) => elementType;
        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;
        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) => $"{genericType}<{string.Join(",", typeArguments)}>";
        public string GetGenericMethodParameter(object? context, int index) => $"!!{index}";
        public string GetGenericTypeParameter(object? context, int index) => $"!{index}";
        public string GetFunctionPointerType(MethodSignature<string> signature) => $"fnptr({string.Join(",", signature.ParameterTypes)}){signature.ReturnType}";
    }
}
