{
 "key": "8c406635d5fd3ff6",
 "signature": "C1JrS6CRQYpmA0H6ZjchdOgb+NcxSlWuVSLLER5CmtF2wPItjdaiyZugbI8guFlc8GH+QRcT+uiOqLtBxIHFDg=="
}
