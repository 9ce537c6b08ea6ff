//! The attributes of Ladle's SDK. Use them through the `ladle` crate: `#[ladle::task]`,
//! `#[ladle::main]`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::{
    FnArg, GenericArgument, ItemFn, PathArguments, ReturnType, Type, parse_macro_input,
    punctuated::Punctuated, spanned::Spanned, token::Comma,
};

/// Makes a function a task that a cluster can run.
///
/// ```ignore
/// #[ladle::task]
/// fn square(x: u64) -> u64 { x * x }
///
/// let four = cluster.submit(square, 2)?.await?;
/// let local = square::call(2); // the body still runs in this process too
/// ```
///
/// The function becomes a value of its own type (a handle that `submit`, `map` and
/// `map_reduce` take), registered by name when the program starts, so that the same program
/// started as a worker finds it. Its arguments and result must be serde types; several
/// arguments travel as a tuple. A function returning `Result<T, E>` (with `E: Display`) gives
/// its futures an error with E's message. A function of two arguments of its result's type
/// (`fn add(a: u64, b: u64) -> u64`) can also be the reducer of `map_reduce`.
/// `#[ladle::task(gpu)]` marks a task that needs a GPU slot: it runs in a worker that owns one
/// device, and `ladle::gpu::context()` hands it a CUDA context there.
/// `#[ladle::task(prefer_gpu)]` marks one that takes a free GPU slot when there is one and a CPU
/// slot otherwise; `ladle::gpu::ordinal()` tells it which it got.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let gpu = match parse_task_attr(attr.into()) {
        Ok(gpu) => gpu,
        Err(err) => return err.to_compile_error().into(),
    };
    let function = parse_macro_input!(item as ItemFn);
    match expand_task(function, gpu) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn parse_task_attr(attr: Tokens) -> syn::Result<Tokens> {
    if attr.is_empty() {
        return Ok(quote!(::ladle::GpuUse::None));
    }
    let ident: syn::Ident = syn::parse2(attr)?;
    if ident == "gpu" {
        Ok(quote!(::ladle::GpuUse::Required))
    } else if ident == "prefer_gpu" {
        Ok(quote!(::ladle::GpuUse::Preferred))
    } else {
        Err(syn::Error::new(
            ident.span(),
            "the options of #[ladle::task] are `gpu` (needs a GPU) and `prefer_gpu`",
        ))
    }
}

fn expand_task(function: ItemFn, gpu: Tokens) -> syn::Result<Tokens> {
    let sig = &function.sig;
    if sig.asyncness.is_some() {
        return Err(syn::Error::new(
            sig.span(),
            "a task is an ordinary (not async) function: it runs on a worker thread",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a task cannot be generic: the worker looks it up by name",
        ));
    }
    let vis = &function.vis;
    let name = &sig.ident;
    let attrs = &function.attrs;
    let block = &function.block;
    let inputs = &sig.inputs;
    let output = &sig.output;

    let mut pats = Vec::new();
    let mut types = Vec::new();
    for arg in inputs {
        match arg {
            FnArg::Typed(pt) => {
                pats.push((*pt.pat).clone());
                types.push((*pt.ty).clone());
            }
            FnArg::Receiver(r) => return Err(syn::Error::new(r.span(), "a task cannot take self")),
        }
    }
    let names: Vec<_> = (0..pats.len())
        .map(|i| format_ident!("__ladle_arg{i}"))
        .collect();
    let input_ty = match types.as_slice() {
        [one] => quote!(#one),
        many => quote!((#(#many,)*)),
    };
    let bind = match names.as_slice() {
        [one] => quote!(let #one = input;),
        many => quote!(let (#(#many,)*) = input;),
    };

    let (out_ty, returns_result) = match output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (quote!(#ok), true),
            None => (quote!(#ty), false),
        },
    };
    let call = quote!(Self::call(#(#names),*));
    let run_body = if returns_result {
        quote!(#call.map_err(|e| ::std::string::ToString::to_string(&e)))
    } else {
        quote!(::core::result::Result::Ok(#call))
    };

    // A reducer folds two values of its result's type into one.
    let out_text = out_ty.to_string();
    let reducer = types.len() == 2 && types.iter().all(|t| quote!(#t).to_string() == out_text);
    let entry = if reducer {
        quote!(::ladle::__private::Entry::reducer::<#name>())
    } else {
        quote!(::ladle::__private::Entry::task::<#name>())
    };
    let reducer_impl = reducer.then(|| quote!(impl ::ladle::Reducer for #name {}));

    let call_inputs: Punctuated<FnArg, Comma> = inputs.clone();
    Ok(quote! {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        impl #name {
            /// Runs the task's body here, in this process.
            #(#attrs)*
            #[allow(dead_code)]
            #vis fn call(#call_inputs) #output #block
        }

        impl ::ladle::Task for #name {
            type Input = #input_ty;
            type Output = #out_ty;
            const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name));
            const GPU: ::ladle::GpuUse = #gpu;

            fn run(input: Self::Input) -> ::core::result::Result<Self::Output, ::std::string::String> {
                #bind
                #run_body
            }
        }

        #reducer_impl

        ::ladle::__private::inventory::submit! { #entry }
    })
}

/// `T` of a `Result<T, …>` return type (std's, anyhow's or an alias named Result).
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}

/// Marks the program's `main`: when an agent starts the program as a worker, it serves tasks
/// and never reaches the body; otherwise the body runs as usual (an `async fn main` runs on a
/// multi-threaded tokio runtime), with Ladle's warnings logged to stderr (`RUST_LOG` changes
/// that).
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Tokens::from(attr).span(), "#[ladle::main] takes no options")
            .to_compile_error()
            .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    let attrs = &function.attrs;
    let vis = &function.vis;
    let name = &function.sig.ident;
    let output = &function.sig.output;
    let block = &function.block;
    if !function.sig.inputs.is_empty() {
        return syn::Error::new(function.sig.inputs.span(), "main takes no arguments")
            .to_compile_error()
            .into();
    }
    let body = if function.sig.asyncness.is_some() {
        quote!(::ladle::__private::block_on(async move #block))
    } else {
        quote!(#block)
    };
    quote! {
        #(#attrs)*
        #vis fn #name() #output {
            ::ladle::__private::start();
            #body
        }
    }
    .into()
}
