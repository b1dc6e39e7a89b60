{
 "key": "8c406635d5fd3ff6",
 "signature": "71yCxbLM2E+RgskWodEyGbaVF/dwKQsoMIyhnnKpCxsY9f1Jjyya4MYdK9y/z6xeuUzpPonbvYUl+eD7r4WdAg=="
}
